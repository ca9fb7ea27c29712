"""Issue 13, finding 5 (vault and ledger part): no profile name left after `forget`, deleted event rows detected.

The attacker holds the file and uses the sqlite3 module; the owner uses the real vault and CLI.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from personal.vault import Vault, VaultNeedsMigration
from privacy.accountant import SubsampledGaussian
from privacy.budget import BudgetPolicy, ReleaseGate

from .conftest import FAST, PASS, cli, make_events, raw_bytes

NAME = "zanzibar-owner-7"
MECH = SubsampledGaussian(1.0, 0.05, 100)
RNG = {"rng": "os-csprng"}  # a real device draws its noise from the OS CSPRNG (privacy.randomness)


def file_bytes(path: Path) -> bytes:
    """Every byte on disk for this vault: the file, its WAL, shared memory and journal."""
    return raw_bytes(path) + (Path(f"{path}-shm").read_bytes() if Path(f"{path}-shm").exists() else b"")


def test_forget_leaves_no_profile_name_in_the_file(tmp_path: Path):
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(make_events(60, users=(NAME, "other")))
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        for unit in ("record", "user"):
            gate.set_policy(NAME, unit, BudgetPolicy(5.0, 1e-5))
        gate.commit(NAME, "record", MECH, "a" * 64, details={"model": "tiny", **RNG})
        gate.commit(NAME, "user", MECH, "b" * 64, mechanism="fed-round", details={"round": 1, **RNG})
        v.forget(NAME)
        assert v.profiles() == ["other"]
    data = file_bytes(path)
    for form in (NAME.encode(), NAME.encode("utf-16-le"), NAME.upper().encode()):
        assert form not in data, f"{form!r} found in the vault file after forget"
    conn = sqlite3.connect(path)
    (n,) = conn.execute("select count(*) from ledger").fetchone()
    conn.close()
    assert n == 4  # the releases and policies stay on the chain, under an id, and still verify
    assert cli("audit", "verify", "--vault", str(path), passphrase=None).returncode == 0


def test_the_ledger_never_holds_a_name_even_before_forget(tmp_path: Path):
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(make_events(10, users=(NAME,)))
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        gate.set_policy(NAME, "record", BudgetPolicy(5.0, 1e-5))
        gate.commit(NAME, "record", MECH, "a" * 64, details=RNG)
        v.db.conn.execute("pragma wal_checkpoint(TRUNCATE)")
    assert NAME.encode() not in file_bytes(path)
    out = cli("audit", "report", "--vault", str(tmp_path / "vault.db"), "--json", str(tmp_path / "r.json"),
              passphrase=None)
    assert out.returncode == 0 and NAME not in (tmp_path / "r.json").read_text()
    owner = cli("audit", "report", "--vault", str(path), "--names", "--json", str(tmp_path / "o.json"))
    assert owner.returncode == 0 and NAME in (tmp_path / "o.json").read_text(), owner.stderr


def test_deleting_event_rows_is_detected_by_vault_verify(tmp_path: Path):
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(make_events(300))
        assert v.verify().ok
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("delete from events where id in (select id from events order by id limit 100)")
    conn.close()
    with Vault.open(path, PASS) as v:
        report = v.verify()
    assert not report.ok
    assert any("deleted" in str(f) for f in report.failures), [str(f) for f in report.failures]
    out = cli("vault", "verify", "--vault", str(path))
    assert out.returncode == 1 and "deleted" in out.stdout, out.stdout + out.stderr


def test_deleting_rows_and_the_sealed_state_is_detected_and_blocks_imports(tmp_path: Path):
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(make_events(20))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("delete from events where id < 5")
        conn.execute("delete from sealed_state")
    conn.close()
    with Vault.open(path, PASS) as v:
        assert not v.verify().ok
        with pytest.raises(Exception, match="sealed state"):
            v.add_events(make_events(3))  # writing new counts over it would hide the deletion
        assert v.count() == 16  # nothing stored is lost


def test_an_old_format_vault_gets_a_clear_migration_error(tmp_path: Path):
    path = tmp_path / "vault.db"
    Vault.create(path, PASS, FAST).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("update meta set value = '1' where key = 'format_version'")
    conn.close()
    with pytest.raises(VaultNeedsMigration, match="format 1.*export your events"):
        Vault.open(path, PASS)
    out = cli("vault", "list", "--vault", str(path))
    assert out.returncode != 0 and "format 1" in out.stderr and "Traceback" not in out.stderr
