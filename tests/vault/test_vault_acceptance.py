"""Issue 2, acceptance points 1-7: what an attacker with the file, a crash, or a second process can do."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from personal.errors import IntegrityError, ProfileNotFound, WrongPassphrase
from personal.events_io import export_events, read_events
from personal.vault import Event, Vault
from tests.vault.conftest import FAST, PASS, REPO, cli, content_hash, make_events, raw_bytes


# 1 -----------------------------------------------------------------------------------------
def test_1_no_marker_or_timestamp_in_raw_bytes(tmp_path, vault_path):
    markers = [f"MARKER{i:03d}xq" for i in range(50)]
    base = datetime(2023, 2, 3, 4, 5, 6, tzinfo=timezone.utc).timestamp()
    events = [
        Event(
            f"user-{markers[i % 50]}",
            datetime.fromtimestamp(base + 3607 * i, tz=timezone.utc),
            f"ate {markers[(i + 1) % 50]}",
            {"where": markers[(i + 2) % 50]},
            f"diary {markers[(i + 3) % 50]}",
        )
        for i in range(10_000)
    ]
    src = tmp_path / "events.csv"
    export_events(events, src)
    with Vault.create(vault_path, PASS, FAST) as v:
        assert v.add_events(read_events(src).events) == 10_000
        assert v.count() == 10_000
        v.put_artefact(events[0].user, "cache", "examples", f"cache {markers[7]}".encode(), {"about": markers[8]})
        while_open = raw_bytes(vault_path)
    after_close = raw_bytes(vault_path)
    probes = set(markers) | {"MARKER"}
    for ev in events[::97]:  # the timestamp values in the forms an attacker would grep for
        probes |= {ev.timestamp.isoformat(), ev.timestamp.isoformat()[:16], ev.timestamp.strftime("%Y-%m-%d %H:%M"), str(int(ev.timestamp.timestamp()))}
    for blob in (while_open, after_close):
        assert len(blob) > 10_000 * 100  # the events really are in there
        found = [p for p in probes if p.encode() in blob or p.encode("utf-16-le") in blob]
        assert not found, f"clear values in the file bytes: {found[:5]}"


# 2 -----------------------------------------------------------------------------------------
def _flip(vault_path, table, column, row_id, pos):
    with sqlite3.connect(vault_path) as conn:
        blob = bytearray(conn.execute(f"SELECT {column} FROM {table} WHERE id = ?", (row_id,)).fetchone()[0])
        blob[pos % len(blob)] ^= 0x01
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (bytes(blob), row_id))
    return len(blob)


def test_2_any_flipped_byte_raises_integrity_error_naming_the_row(vault_path):
    with Vault.create(vault_path, PASS, FAST) as v:
        v.add_events(make_events(6, users=("ann",)))
        v.put_artefact("ann", "adapter", "a", b"weights" * 10, {"r": 8})
    with sqlite3.connect(vault_path) as conn:
        original = conn.execute("SELECT ts FROM events WHERE id = 3").fetchone()[0]
    for pos in range(len(original)):  # every byte of one sealed timestamp: nonce, body and tag
        with sqlite3.connect(vault_path) as conn:
            conn.execute("UPDATE events SET ts = ? WHERE id = 3", (original,))
        _flip(vault_path, "events", "ts", 3, pos)
        with Vault.open(vault_path, PASS) as v, pytest.raises(IntegrityError) as err:
            v.events("ann")
        assert (err.value.table, err.value.row, err.value.column) == ("events", 3, "ts"), pos
        assert "row 3" in str(err.value)
    with sqlite3.connect(vault_path) as conn:
        conn.execute("UPDATE events SET ts = ? WHERE id = 3", (original,))
    for table, column, row in [("events", "event", 1), ("events", "context", 2), ("events", "text", 4), ("artefacts", "data", 1), ("artefacts", "meta", 1)]:
        _flip(vault_path, table, column, row, 20)
    with Vault.open(vault_path, PASS) as v:
        with pytest.raises(IntegrityError, match="artefacts, row 1, column data"):
            v.get_artefact("ann", "adapter", "a")
        failing = {(f.table, f.row, f.column) for f in v.verify().failures}
    assert failing == {("events", 1, "event"), ("events", 2, "context"), ("events", 4, "text"), ("artefacts", 1, "data"), ("artefacts", 1, "meta")}
    out = cli("vault", "verify", "--vault", str(vault_path))
    assert out.returncode == 1
    assert "table events, row 2, column context" in out.stdout and "table artefacts, row 1, column meta" in out.stdout
    assert "verification failed: 5 sealed value(s)" in out.stderr


def test_2_flip_in_the_file_bytes_and_damaged_profile_key(vault_path):
    with Vault.create(vault_path, PASS, FAST) as v:
        v.add_events(make_events(20))
        blob = bytes(v.db.execute("SELECT event FROM events WHERE id = 7").fetchone()[0])
    data = bytearray(vault_path.read_bytes())
    pos = bytes(data).find(blob)
    assert pos >= 0
    data[pos + len(blob) // 2] ^= 0x80  # a disk-level flip, not through SQL
    vault_path.write_bytes(bytes(data))
    with Vault.open(vault_path, PASS) as v:
        assert [(f.table, f.row, f.column) for f in v.verify().failures] == [("events", 7, "event")]
    with sqlite3.connect(vault_path) as conn:
        (bob,) = conn.execute("SELECT profile FROM events WHERE id = 2").fetchone()  # row ids from 1: odd are ann's, even are bob's
    _flip(vault_path, "profiles", "wrapped_key", bob, 30)
    with Vault.open(vault_path, PASS) as v:
        with pytest.raises(IntegrityError, match=f"profiles, row {bob}, column wrapped_key"):
            v.events("bob")
        report = v.verify()
    failing = {(f.table, f.row, f.column) for f in report.failures}
    assert not report.ok and {("profiles", bob, "wrapped_key"), ("events", 7, "event")} <= failing


# 3 -----------------------------------------------------------------------------------------
def _dir_state(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.iterdir()) if p.name.startswith(path.name)}


def test_3_wrong_passphrase_one_line_nonzero_file_unchanged(tmp_path, vault_path):
    with Vault.create(vault_path, PASS) as v:  # the default (slow) KDF
        v.add_events(make_events(30))
    src = tmp_path / "e.jsonl"
    export_events(make_events(30), src)
    before = _dir_state(vault_path)
    for args in (["vault", "list"], ["vault", "import", str(src)], ["vault", "forget", "ann", "--yes"]):
        out = cli(*args, "--vault", str(vault_path), passphrase="not the passphrase")
        assert out.returncode == 1, args
        assert out.stderr.strip().count("\n") == 0 and "wrong passphrase" in out.stderr, out.stderr
        assert _dir_state(vault_path) == before
    key_file = tmp_path / "key.txt"
    key_file.write_text("also wrong\n")
    key_file.chmod(0o600)  # key files must be owner-only
    out = cli("vault", "list", "--vault", str(vault_path), "--key-file", str(key_file), passphrase=None)
    assert out.returncode == 1 and "wrong passphrase" in out.stderr
    out = cli("vault", "list", "--vault", str(vault_path), passphrase=None)  # no source and no terminal
    assert out.returncode == 1 and "HOMEBODY_PASSPHRASE" in out.stderr
    assert _dir_state(vault_path) == before
    with pytest.raises(WrongPassphrase):
        Vault.open(vault_path, "wrong")


# 4 -----------------------------------------------------------------------------------------
def test_4_passphrase_change_and_rotation_lose_nothing(vault_path):
    with Vault.create(vault_path, PASS, FAST) as v:
        v.add_events(make_events(2_000, users=("ann", "bob", "cy")))
        v.put_artefact("ann", "adapter", "lora", os.urandom(5_000), {"rank": 8})
        v.put_artefact("cy", "cache", "x", b"cached", {})
        count, digest, public = v.count(), content_hash(v), v.public_key().public_bytes_raw()
        old_blobs = {bytes(r[0]) for r in v.db.execute("SELECT ts FROM events UNION ALL SELECT data FROM artefacts")}
        old_lookups = {r[0] for r in v.db.execute("SELECT lookup FROM profiles")}
        v.change_passphrase("new passphrase")
    with pytest.raises(WrongPassphrase):
        Vault.open(vault_path, PASS)
    with Vault.open(vault_path, "new passphrase") as v:
        assert (v.count(), content_hash(v)) == (count, digest)
        v.rotate_data_key()
        assert (v.count(), content_hash(v)) == (count, digest)
        new_blobs = {bytes(r[0]) for r in v.db.execute("SELECT ts FROM events UNION ALL SELECT data FROM artefacts")}
        assert not old_blobs & new_blobs  # every value re-encrypted
        assert not old_lookups & {r[0] for r in v.db.execute("SELECT lookup FROM profiles")}
    with Vault.open(vault_path, "new passphrase") as v:
        assert (v.count(), content_hash(v)) == (count, digest)
        assert v.public_key().public_bytes_raw() == public and v.verify().ok


# 5 -----------------------------------------------------------------------------------------
def test_5_sigkill_mid_import_loses_nothing_committed(tmp_path, vault_path):
    with Vault.create(vault_path, PASS, FAST) as v:
        v.add_events(make_events(5_000))
        committed = content_hash(v)
    big = tmp_path / "big.csv"
    export_events(make_events(50_000, users=("ann", "dee"), tag="-big"), big)
    env = {**os.environ, "HOMEBODY_PASSPHRASE": PASS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "vault", "import", str(big), "--vault", str(vault_path)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wal = vault_path.with_name(vault_path.name + "-wal")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if wal.exists() and wal.stat().st_size > 256 * 1024:  # the import's transaction is spilling pages
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the import finished before it could be killed"
    with Vault.open(vault_path, PASS) as v:
        assert v.verify().ok
        assert v.count() == 5_000  # the killed import's open transaction rolled back
        assert content_hash(v) == committed


# 6 -----------------------------------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from datetime import datetime, timedelta, timezone
from personal.vault import Event, Vault
path, who, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
with Vault.open(path, "{pw}") as v:
    for batch in range(40):
        v.add_events([Event(user, t0 + timedelta(seconds=batch * 100 + i), f"{{who}}-{{batch}}-{{i}}")
                      for i in range(25) for user in ("shared", who)])
"""


def test_6_two_processes_writing_at_once_lose_nothing(tmp_path, vault_path):
    Vault.create(vault_path, PASS, FAST).close()
    go = tmp_path / "go"
    script = WRITER.format(pw=PASS)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(vault_path), who, str(go)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for who in ("p1", "p2")
    ]
    time.sleep(0.5)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with Vault.open(vault_path, PASS) as v:
        assert v.profiles() == ["p1", "p2", "shared"]  # one "shared" profile although both created it
        assert v.count() == 2 * 40 * 25 * 2
        shared = [e.event for e in v.events("shared")]
        assert len(shared) == len(set(shared)) == 2_000
        assert {e.event for e in v.events("p1")} == {f"p1-{b}-{i}" for b in range(40) for i in range(25)}
        assert v.verify().ok


# 7 -----------------------------------------------------------------------------------------
def test_7_forget_leaves_nothing_recoverable(vault_path):
    with Vault.create(vault_path, PASS, FAST) as v:
        v.add_events(make_events(1_000, users=("alice", "bob")))
        v.put_artefact("alice", "adapter", "lora", os.urandom(200_000), {"rank": 8})
        v.put_artefact("bob", "adapter", "lora", b"bob weights", {"rank": 8})
        (pid,) = v.db.execute("SELECT profile FROM artefacts WHERE length(data) > 100000").fetchone()
        sealed = [bytes(b) for r in v.db.execute("SELECT ts, event, context, text FROM events WHERE profile = ?", (pid,)) for b in r]
        sealed += [bytes(b) for r in v.db.execute("SELECT kind, name, data, meta FROM artefacts WHERE profile = ?", (pid,)) for b in r]
        sealed += [bytes(b) for r in v.db.execute("SELECT name, wrapped_key FROM profiles WHERE id = ?", (pid,)) for b in r]
        bob_events = v.events("bob")
        v.forget("alice")
        # Read while still open (WAL in place) and again after close.
        open_bytes = raw_bytes(vault_path)
    closed_bytes = raw_bytes(vault_path)
    assert len(sealed) == 500 * 4 + 4 + 2
    for blob_set in (open_bytes, closed_bytes):
        # no nonce (first 12 bytes) and no GCM tag (last 16 bytes) of any of alice's ciphertexts survives
        left = [b for b in sealed if b[:12] in blob_set or b[-16:] in blob_set]
        assert not left, f"{len(left)} of alice's sealed values still in the file bytes"
    with Vault.open(vault_path, PASS) as v:
        assert v.profiles() == ["bob"]
        with pytest.raises(ProfileNotFound):
            v.events("alice")
        assert v.events("bob") == bob_events and v.get_artefact("bob", "adapter", "lora")[0] == b"bob weights"
        assert v.verify().ok
