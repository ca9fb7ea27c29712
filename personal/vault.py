"""The vault: one SQLite file per device holding habit events and derived artefacts, sealed.

Keys: a random data key is wrapped by scrypt(passphrase); each profile has its own key wrapped
by the data key, so forgetting a profile destroys its key (crypto-shredding). Every personal
value (timestamp, event, context, free text, profile name, artefact) is AES-256-GCM sealed with
associated data `table|row|column`. Profile names are found through a keyed hash (HMAC).

Clear tables: `meta` (non-secret settings, the device public key) and what privacy/ keeps in
the same file through `vault.db`: the signed ledger of releases and budget policies, which names
profiles only by a keyed hash (no personal values), and `sealed_state`, an AES-GCM sealed record
of the ledger's length and head and of each profile's event count and row-id digest, updated in
the same transaction as every append, import and forget (so deleted event rows are detected).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlite_utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from personal.crypto import KdfParams, Sealer, kek_check, lookup_id, mac_subkey, new_key
from personal.errors import (
    ArtefactNotFound,
    IntegrityError,
    InvalidArtefact,
    InvalidEvent,
    NotAVault,
    ProfileNotFound,
    StoredEventsSkipped,
    VaultChanged,
    VaultCorrupted,
    VaultError,
    VaultExists,
    WrongPassphrase,
)
from privacy.ledger import Ledger, LedgerError, load_sealed_state, store_sealed_state

FORMAT = "homebody-vault"
FORMAT_VERSION = "2"  # 2: signed policies + profile ids in the ledger, sealed state (counts, chain head)
FAST_KDF = (2**10, 8, 1)  # simulations only: recorded in the file and reported by verify
BUSY_TIMEOUT_S = 60.0
_META_SIGNING = ("meta", "device_signing_key", "value")
_META_DATA_KEY = ("meta", "wrapped_data_key", "value")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lookup TEXT NOT NULL UNIQUE,
    name BLOB NOT NULL, wrapped_key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, profile INTEGER NOT NULL,
    ts BLOB NOT NULL, event BLOB NOT NULL, context BLOB NOT NULL, text BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_profile ON events(profile);
CREATE TABLE IF NOT EXISTS artefacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, profile INTEGER NOT NULL, lookup TEXT NOT NULL UNIQUE,
    kind BLOB NOT NULL, name BLOB NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS artefacts_profile ON artefacts(profile);
"""
EVENT_COLUMNS = ("ts", "event", "context", "text")
ARTEFACT_COLUMNS = ("kind", "name", "data", "meta")


class VaultNeedsMigration(NotAVault):
    """The file is a vault of an older format this homebody cannot open."""


class StateMismatch(IntegrityError):
    """Rows or ledger records that disagree with the sealed state or the signed chain (deleted, restored)."""

    def __init__(self, table: str, row: object, column: str, detail: str) -> None:
        super().__init__(table, row, column, detail)
        self.args = (f"{table}: {detail}",)


# Bounds every event meets, whatever its source (CSV, JSON Lines, the SDK, the API, simulations).
MAX_NAME_CHARS = 200  # user and event name
MAX_CONTEXT_FIELDS = 64
MAX_KEY_CHARS = 100
MAX_VALUE_CHARS = 1_000
MAX_TEXT_CHARS = 10_000
FIRST_YEAR, LAST_YEAR = 1970, 2100  # in UTC; naive timestamps count as UTC
_EARLIEST, _AFTER_LATEST = datetime(FIRST_YEAR, 1, 1), datetime(LAST_YEAR + 1, 1, 1)


def order_key(ts: datetime) -> datetime:
    """The one ordering rule: naive timestamps count as UTC (raises OverflowError far outside 1..9999)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        return ts.replace(tzinfo=None)
    return (ts.replace(tzinfo=None) - ts.utcoffset()).replace(tzinfo=None)


def _sane_key(ts: datetime) -> datetime | None:
    """`order_key(ts)` when `ts` lies within FIRST_YEAR..LAST_YEAR in UTC, else None."""
    try:
        key = order_key(ts)
    except (OverflowError, ValueError):
        return None
    return key if _EARLIEST <= key < _AFTER_LATEST else None


def timestamp_problem(ts: datetime) -> str | None:
    """Why `ts` is not a sane event time (outside FIRST_YEAR..LAST_YEAR in UTC), or None. Names no value."""
    if _sane_key(ts) is None:
        return f"timestamp out of range (years {FIRST_YEAR}..{LAST_YEAR} in UTC)"
    return None


def _text_problem(what: str, value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{what} longer than {limit:,} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 text (a lone surrogate or undecodable byte)"
    return None


@dataclass(frozen=True)
class Event:
    """One habit event: who, when, what, optional context fields and free text.

    Every way in builds one of these, so this check is the one validation path: types, sizes,
    valid UTF-8 and a sane timestamp. Messages name the field, never its value.
    """

    user: str
    timestamp: datetime
    event: str
    context: dict[str, str] = field(default_factory=dict)
    text: str | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise InvalidEvent(problem)

    def problem(self) -> str | None:
        """The first reason this event is invalid, or None."""
        if not isinstance(self.user, str) or not self.user.strip():
            return f"event user must be a non-empty string, got {_kind(self.user)}"
        if not isinstance(self.timestamp, datetime):
            return f"event timestamp must be a datetime, got {type(self.timestamp).__name__}"
        if not isinstance(self.event, str) or not self.event.strip():
            return f"event name must be a non-empty string, got {_kind(self.event)}"
        if not isinstance(self.context, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.context.items()
        ):
            return "event context must map strings to strings"
        if self.text is not None and not isinstance(self.text, str):
            return f"event text must be a string or None, got {type(self.text).__name__}"
        if len(self.context) > MAX_CONTEXT_FIELDS:
            return f"event context has more than {MAX_CONTEXT_FIELDS} fields"
        checks = [("user", self.user, MAX_NAME_CHARS), ("event", self.event, MAX_NAME_CHARS)]
        checks += [(f"context field #{i + 1} name", k, MAX_KEY_CHARS) for i, k in enumerate(self.context)]
        checks += [(f"context field #{i + 1} value", v, MAX_VALUE_CHARS) for i, v in enumerate(self.context.values())]
        if self.text is not None:
            checks.append(("text", self.text, MAX_TEXT_CHARS))
        for what, value, limit in checks:
            found = _text_problem(what, value, limit)
            if found is not None:
                return found
        return timestamp_problem(self.timestamp)

    @classmethod
    def _trusted(cls, user: str, timestamp: datetime, event: str, context: dict[str, str], text: str | None) -> Event:
        """Build from values the vault itself sealed (already validated): skips the checks on the read path."""
        self = object.__new__(cls)
        self.__dict__.update(user=user, timestamp=timestamp, event=event, context=context, text=text)
        return self


def _kind(value: object) -> str:
    """A value's shape for an error message (its type, or 'a blank string'), never the value itself."""
    return "a blank string" if isinstance(value, str) else type(value).__name__


@dataclass(frozen=True)
class VaultConfig:
    """Key-derivation settings for a new vault (scrypt). `fast_kdf` is for simulations only."""

    kdf_n: int = 2**15
    kdf_r: int = 8
    kdf_p: int = 1
    fast_kdf: bool = False

    def __post_init__(self) -> None:
        if self.kdf_n < 2 or self.kdf_n & (self.kdf_n - 1) or self.kdf_r < 1 or self.kdf_p < 1:
            raise VaultError(f"invalid scrypt settings n={self.kdf_n} r={self.kdf_r} p={self.kdf_p} (n must be a power of two)")

    def kdf(self) -> tuple[int, int, int]:
        """The (n, r, p) actually used."""
        return FAST_KDF if self.fast_kdf else (self.kdf_n, self.kdf_r, self.kdf_p)


@dataclass
class VerifyReport:
    """What `Vault.verify` found: every sealed value opened, or the list of those that failed."""

    checked: int
    failures: list[IntegrityError]
    profiles: int
    events: int
    artefacts: int
    kdf: str
    fast_kdf: bool
    sqlite_check: str = "ok"

    @property
    def ok(self) -> bool:
        return not self.failures and self.sqlite_check == "ok"


_json_object = json.JSONDecoder().decode


def _encode_text(text: str | None) -> bytes:
    return b"\x00" if text is None else b"\x01" + text.encode()


def _decode_text(raw: bytes) -> str | None:
    return None if raw[:1] == b"\x00" else raw[1:].decode()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise NotAVault(f"{path} is not a homebody vault ({exc})") from None
    meta = dict(rows)
    if meta.get("format") != FORMAT:
        raise NotAVault(f"{path} is not a homebody vault (no '{FORMAT}' marker)")
    if meta.get("format_version") == "1":
        raise VaultNeedsMigration(
            f"{path} is a vault of format 1 (unsigned budgets, profile names in the ledger, no sealed state); this "
            f"homebody reads format {FORMAT_VERSION} and cannot upgrade it in place: export your events with the "
            "homebody that wrote it (homebody vault export), create a new vault (homebody vault init) and import them"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise NotAVault(f"{path} has vault format {meta.get('format_version')!r}; this homebody reads {FORMAT_VERSION}")
    return meta


def _kdf_params(meta: dict[str, str], path: Path) -> KdfParams:
    try:
        return KdfParams(int(meta["kdf_n"]), int(meta["kdf_r"]), int(meta["kdf_p"]), bytes.fromhex(meta["kdf_salt"]))
    except (KeyError, ValueError) as exc:
        raise VaultCorrupted(f"{path}: key-derivation settings are damaged ({exc})") from None


class Vault:
    """An open vault. Create with `Vault.create`, open with `Vault.open`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection, kek: bytes, data_key: bytes, meta: dict[str, str]) -> None:
        self.path = path
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._kek = kek
        self._meta = meta
        self._set_data_key(data_key, meta["data_key_id"])
        self._needs_scrub = False
        self._signer: Ed25519PrivateKey | None = None

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, passphrase: str, config: VaultConfig = VaultConfig()) -> Vault:
        """Create a new vault file at `path` (refuses to overwrite) and return it open."""
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise VaultExists(f"{path} already exists; open it, or choose another path")
        _check_passphrase(passphrase)
        path.parent.mkdir(parents=True, exist_ok=True)
        n, r, p = config.kdf()
        params = KdfParams(n, r, p, os.urandom(16))
        kek = params.derive(passphrase)
        data_key = new_key()
        signing = Ed25519PrivateKey.generate()
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kdf": "scrypt",
            "kdf_n": str(n),
            "kdf_r": str(r),
            "kdf_p": str(p),
            "kdf_salt": params.salt.hex(),
            "kdf_fast": "1" if config.fast_kdf else "0",
            "kek_check": kek_check(kek),
            "wrapped_data_key": Sealer(kek).seal(data_key, *_META_DATA_KEY).hex(),
            "data_key_id": os.urandom(8).hex(),
            "device_public_key": _raw_public(signing.public_key()).hex(),
            "device_signing_key": Sealer(data_key).seal(_raw_private(signing), *_META_SIGNING).hex(),
        }
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)  # owner-only from the first byte
        os.close(fd)
        conn = _connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        with conn:
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("PRAGMA synchronous=FULL")
        vault = cls(path, conn, kek, data_key, meta)
        # The chain starts now (signed genesis head), so a file without one has had it deleted.
        with vault._write() as c:
            Ledger(vault.db, signer=signing).initialise()
            state = load_sealed_state(c, signing) or {}
            state["events"] = {}
            store_sealed_state(c, signing, state)
        return vault

    @classmethod
    def open(cls, path: str | os.PathLike, passphrase: str) -> Vault:
        """Open an existing vault; a wrong passphrase raises `WrongPassphrase` and writes nothing."""
        path = Path(path)
        if not path.is_file():
            raise NotAVault(f"no vault at {path}; create one with `homebody vault init`")
        conn = _connect(path)
        try:
            meta = _read_meta(conn, path)
            kek = _kdf_params(meta, path).derive(passphrase)
            data_key = _unwrap_data_key(meta, kek, path)
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, kek, data_key, meta)

    def close(self) -> None:
        """Close the file (finishing a pending scrub of forgotten data first)."""
        with self._lock:
            if self._conn is None:
                return
            if self._needs_scrub:
                self._scrub()
            self._conn.close()
            self._conn = None
            self._kek = self._data_key = b""
            self._signer = None
            self._profile_keys.clear()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- events
    def add_events(self, events: Iterable[Event]) -> int:
        """Seal and store `events` in one transaction; returns how many were added."""
        batch = list(events)
        for ev in batch:
            if not isinstance(ev, Event):
                raise InvalidEvent(f"add_events takes Event objects, got {type(ev).__name__}")
        if not batch:
            return 0
        with self._write() as conn:
            pids = {user: self._ensure_profile(conn, user) for user in dict.fromkeys(ev.user for ev in batch)}
            first = self._next_id(conn, "events")
            ids = list(range(first, first + len(batch)))
            cols: dict[str, list[bytes]] = {c: [b""] * len(batch) for c in EVENT_COLUMNS}
            by_profile: dict[int, list[int]] = {}
            for i, ev in enumerate(batch):
                by_profile.setdefault(pids[ev.user], []).append(i)
            for pid, idx in by_profile.items():
                sealer, rows = self._profile_keys[pid][1], [ids[i] for i in idx]
                plain = {
                    "ts": [batch[i].timestamp.isoformat().encode() for i in idx],
                    "event": [batch[i].event.encode() for i in idx],
                    "context": [json.dumps(batch[i].context, ensure_ascii=False).encode() for i in idx],
                    "text": [_encode_text(batch[i].text) for i in idx],
                }
                for col, values in plain.items():
                    for i, blob in zip(idx, sealer.seal_many(values, "events", rows, col)):
                        cols[col][i] = blob
            conn.executemany(
                "INSERT INTO events(id, profile, ts, event, context, text) VALUES (?, ?, ?, ?, ?, ?)",
                zip(ids, (pids[ev.user] for ev in batch), cols["ts"], cols["event"], cols["context"], cols["text"]),
            )
            self._update_event_state(conn, {pid: [ids[i] for i in idx] for pid, idx in by_profile.items()})
        return len(batch)

    def events(self, profile: str) -> list[Event]:
        """All events of `profile`, opened and in chronological order (raises ProfileNotFound)."""
        with self._read() as conn:
            pid, sealer = self._profile(conn, profile)
            rows = conn.execute("SELECT id, ts, event, context, text FROM events WHERE profile = ?", (pid,)).fetchall()
        ids = [r[0] for r in rows]
        ts, names, contexts, texts = (
            sealer.open_many([r[j] for r in rows], "events", ids, col) for j, col in enumerate(EVENT_COLUMNS, start=1)
        )
        out, bad = [], []
        for rid, t, name, ctx, txt in zip(ids, ts, names, contexts, texts):
            timestamp = datetime.fromisoformat(t.decode())
            key = _sane_key(timestamp)
            if key is None:  # stored before input validation: it would crash every reader
                bad.append(rid)
                continue
            out.append((key, rid, Event._trusted(profile, timestamp, name.decode(), _json_object(ctx.decode()), _decode_text(txt))))
        if bad:
            warnings.warn(StoredEventsSkipped(profile, bad), stacklevel=2)
        out.sort(key=lambda t: (t[0], t[1]))
        return [e for _, _, e in out]

    def profiles(self) -> list[str]:
        """Names of the stored profiles, sorted."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, name FROM profiles").fetchall()
        return sorted(self._data.open(name, "profiles", pid, "name").decode() for pid, name in rows)

    def has_profile(self, profile: str) -> bool:
        """Whether a profile of that name is stored."""
        with self._read() as conn:
            return self._profile_row(conn, profile) is not None

    def count(self, profile: str | None = None) -> int:
        """Number of events, in all or in one profile (raises ProfileNotFound for an unknown one)."""
        with self._read() as conn:
            if profile is None:
                return conn.execute("SELECT count(*) FROM events").fetchone()[0]
            pid, _ = self._profile(conn, profile)
            return conn.execute("SELECT count(*) FROM events WHERE profile = ?", (pid,)).fetchone()[0]

    # ---------------------------------------------------------------- artefacts
    def put_artefact(self, profile: str, kind: str, name: str, data: bytes, meta: dict) -> None:
        """Seal and store an artefact (creating the profile if needed); overwrites the same kind+name."""
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidArtefact(f"artefact data must be bytes, got {type(data).__name__}")
        if not isinstance(kind, str) or not kind or not isinstance(name, str) or not name:
            raise InvalidArtefact("artefact kind and name must be non-empty strings")
        try:
            meta_raw = json.dumps(meta, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArtefact(f"artefact meta must be JSON-serialisable ({exc})") from None
        if not isinstance(meta, dict):
            raise InvalidArtefact(f"artefact meta must be a dict, got {type(meta).__name__}")
        with self._write() as conn:
            pid = self._ensure_profile(conn, profile)
            sealer = self._profile_keys[pid][1]
            look = lookup_id(self._mac, str(pid), kind, name)
            found = conn.execute("SELECT id FROM artefacts WHERE lookup = ?", (look,)).fetchone()
            rid = found[0] if found else self._next_id(conn, "artefacts")
            blobs = [sealer.seal(v, "artefacts", rid, c) for c, v in zip(ARTEFACT_COLUMNS, (kind.encode(), name.encode(), bytes(data), meta_raw))]
            conn.execute(
                "INSERT OR REPLACE INTO artefacts(id, profile, lookup, kind, name, data, meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rid, pid, look, *blobs),
            )

    def get_artefact(self, profile: str, kind: str, name: str) -> tuple[bytes, dict]:
        """The artefact's data and meta (raises ArtefactNotFound / ProfileNotFound)."""
        with self._read() as conn:
            pid, sealer = self._profile(conn, profile)
            row = conn.execute(
                "SELECT id, data, meta FROM artefacts WHERE lookup = ?", (lookup_id(self._mac, str(pid), kind, name),)
            ).fetchone()
        if row is None:
            raise ArtefactNotFound(f"no artefact {kind}/{name} for profile {profile!r}")
        rid, data, meta = row
        return sealer.open(data, "artefacts", rid, "data"), json.loads(sealer.open(meta, "artefacts", rid, "meta"))

    def list_artefacts(self, profile: str) -> list[tuple[str, str]]:
        """(kind, name) of every artefact of `profile`, sorted."""
        with self._read() as conn:
            pid, sealer = self._profile(conn, profile)
            rows = conn.execute("SELECT id, kind, name FROM artefacts WHERE profile = ?", (pid,)).fetchall()
        return sorted(
            (sealer.open(k, "artefacts", rid, "kind").decode(), sealer.open(n, "artefacts", rid, "name").decode())
            for rid, k, n in rows
        )

    def delete_artefact(self, profile: str, kind: str, name: str) -> None:
        """Delete one artefact (secure_delete zeroes its bytes)."""
        with self._write() as conn:
            pid, _ = self._profile(conn, profile)
            cur = conn.execute("DELETE FROM artefacts WHERE lookup = ?", (lookup_id(self._mac, str(pid), kind, name),))
            if cur.rowcount == 0:
                raise ArtefactNotFound(f"no artefact {kind}/{name} for profile {profile!r}")
        self._scrub()

    # ---------------------------------------------------------------- erasure and keys
    def forget(self, profile: str) -> None:
        """Right to erasure: destroy the profile's key and delete its events and artefacts, leaving no trace in the file."""
        with self._write() as conn:
            pid, _ = self._profile(conn, profile)
            conn.execute("DELETE FROM events WHERE profile = ?", (pid,))
            conn.execute("DELETE FROM artefacts WHERE profile = ?", (pid,))
            conn.execute("DELETE FROM profiles WHERE id = ?", (pid,))
            state = self._sealed_state(conn)
            state["events"].pop(str(pid), None)
            store_sealed_state(conn, self._signing(conn), state)
        self._profile_keys.pop(pid, None)
        self._scrub()

    def change_passphrase(self, new_passphrase: str, config: VaultConfig | None = None) -> None:
        """Rewrap the data key under a new passphrase (nothing else is re-encrypted)."""
        _check_passphrase(new_passphrase)
        if config is None:
            n, r, p = int(self._meta["kdf_n"]), int(self._meta["kdf_r"]), int(self._meta["kdf_p"])
            fast = self._meta.get("kdf_fast", "0")
        else:
            (n, r, p), fast = config.kdf(), "1" if config.fast_kdf else "0"
        params = KdfParams(n, r, p, os.urandom(16))
        kek = params.derive(new_passphrase)
        with self._write() as conn:
            self._check_own_kek(conn)
            updates = {
                "kdf_n": str(n), "kdf_r": str(r), "kdf_p": str(p), "kdf_fast": fast,
                "kdf_salt": params.salt.hex(), "kek_check": kek_check(kek),
                "wrapped_data_key": Sealer(kek).seal(self._data_key, *_META_DATA_KEY).hex(),
            }
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in updates.items()])
        self._kek = kek
        self._meta.update(updates)
        self._scrub()  # the old wrapped key must not linger in the WAL

    def rotate_data_key(self) -> None:
        """New data key and new profile keys; every sealed value re-encrypted in one transaction."""
        data_key = new_key()
        data, mac = Sealer(data_key), mac_subkey(data_key)
        new_profile_keys: dict[int, tuple[bytes, Sealer]] = {}
        with self._write() as conn:
            self._check_own_kek(conn)
            for pid, name_blob, wrapped in conn.execute("SELECT id, name, wrapped_key FROM profiles").fetchall():
                name = self._data.open(name_blob, "profiles", pid, "name")
                old = self._profile_sealer(pid, wrapped)
                pkey = new_key()
                new_wrapped = data.seal(pkey, "profiles", pid, "wrapped_key")
                new = Sealer(pkey)
                new_profile_keys[pid] = (new_wrapped, new)
                conn.execute(
                    "UPDATE profiles SET lookup = ?, name = ?, wrapped_key = ? WHERE id = ?",
                    (lookup_id(mac, name.decode()), data.seal(name, "profiles", pid, "name"), new_wrapped, pid),
                )
                self._reseal_events(conn, pid, old, new)
                self._reseal_artefacts(conn, pid, old, new, mac)
            signing = self._data.open(bytes.fromhex(self._meta_value(conn, "device_signing_key")), *_META_SIGNING)
            data_key_id = os.urandom(8).hex()
            updates = {
                "device_signing_key": data.seal(signing, *_META_SIGNING).hex(),
                "wrapped_data_key": Sealer(self._kek).seal(data_key, *_META_DATA_KEY).hex(),
                "data_key_id": data_key_id,
            }
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in updates.items()])
        self._meta.update(updates)
        self._set_data_key(data_key, data_key_id)
        self._profile_keys.update(new_profile_keys)
        self._scrub()

    def signing_key(self) -> Ed25519PrivateKey:
        """The device's Ed25519 signing key (generated at create, sealed in the vault)."""
        with self._read() as conn:
            return self._signing(conn)

    def _signing(self, conn: sqlite3.Connection) -> Ed25519PrivateKey:
        """The signing key, opened once per open vault (it survives data-key rotation unchanged)."""
        if self._signer is None:
            blob = bytes.fromhex(self._meta_value(conn, "device_signing_key"))
            self._signer = Ed25519PrivateKey.from_private_bytes(self._data.open(blob, *_META_SIGNING))
        return self._signer

    def _sealed_state(self, conn: sqlite3.Connection) -> dict:
        """The sealed state; a missing or edited one is refused (writing over it would hide the tampering)."""
        try:
            state = load_sealed_state(conn, self._signing(conn))
        except LedgerError as exc:
            raise VaultCorrupted(f"{self.path}: {exc}; run `homebody vault verify`") from None
        if state is None or not isinstance(state.get("events"), dict):
            raise VaultCorrupted(f"{self.path}: the sealed state (event counts, ledger head) is missing; it was deleted")
        return state

    def _update_event_state(self, conn: sqlite3.Connection, added: dict[int, list[int]]) -> None:
        """Add rows to each profile's sealed count and row-id digest (inside the adding transaction)."""
        state = self._sealed_state(conn)
        for pid, ids in added.items():
            count, digest = state["events"].get(str(pid), [0, 0])
            state["events"][str(pid)] = [count + len(ids), (digest + _ids_digest(pid, ids)) % _DIGEST_MOD]
        store_sealed_state(conn, self._signing(conn), state)

    def _event_state_failures(self, conn: sqlite3.Connection) -> list[IntegrityError]:
        """Per profile: do the rows in the file match the sealed count and row-id digest?"""
        try:
            sealed = self._sealed_state(conn)["events"]
        except VaultCorrupted as exc:
            return [StateMismatch("sealed_state", 1, "blob", str(exc).split(": ", 1)[-1])]
        found: dict[str, list[int]] = {}
        for pid, rid in conn.execute("SELECT profile, id FROM events"):
            found.setdefault(str(pid), []).append(rid)
        out = []
        for pid in sorted(set(sealed) | set(found), key=lambda p: int(p) if p.lstrip("-").isdigit() else 0):
            want, ids = sealed.get(pid, [0, 0]), found.get(pid, [])
            digest = _ids_digest(int(pid), ids) % _DIGEST_MOD if ids else 0
            if len(ids) != want[0]:
                what = "deleted" if len(ids) < want[0] else "inserted or restored from a copy"
                out.append(StateMismatch("events", f"profile {pid}", "rows", f"the sealed state records {want[0]} "
                                          f"event rows, the file holds {len(ids)}: rows were {what}"))
            elif digest != want[1]:
                out.append(StateMismatch("events", f"profile {pid}", "rows", "the set of event rows differs from the "
                                          "sealed one (rows deleted and others restored from a copy)"))
        return out

    def public_key(self) -> Ed25519PublicKey:
        """The device's public key (stored in clear in meta.device_public_key)."""
        with self._read() as conn:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self._meta_value(conn, "device_public_key")))

    def info(self) -> dict[str, str | int]:
        """Non-secret facts: path, KDF, counts (for `vault list` and reports)."""
        with self._read() as conn:
            n_profiles = conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
            n_events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            n_art = conn.execute("SELECT count(*) FROM artefacts").fetchone()[0]
        m = self._meta
        return {
            "path": str(self.path), "kdf": f"scrypt n={m['kdf_n']} r={m['kdf_r']} p={m['kdf_p']}",
            "fast_kdf": m.get("kdf_fast") == "1", "profiles": n_profiles, "events": n_events, "artefacts": n_art,
        }

    def verify(self) -> VerifyReport:
        """Open every sealed value; report each one that fails (nothing is raised for tampering)."""
        failures: list[IntegrityError] = []
        checked = 0
        with self._read() as conn:
            sqlite_check = conn.execute("PRAGMA quick_check").fetchone()[0]
            try:
                signing = Ed25519PrivateKey.from_private_bytes(
                    self._data.open(bytes.fromhex(self._meta_value(conn, "device_signing_key")), *_META_SIGNING)
                )
                if _raw_public(signing.public_key()).hex() != self._meta_value(conn, "device_public_key"):
                    failures.append(IntegrityError("meta", "device_public_key", "value", "does not match the signing key"))
            except IntegrityError as exc:
                failures.append(exc)
            except ValueError:
                failures.append(IntegrityError("meta", "device_signing_key", "value", "not hex"))
            checked += 1
            sealers: dict[int, Sealer] = {}
            profiles = conn.execute("SELECT id, lookup, name, wrapped_key FROM profiles").fetchall()
            for pid, look, name_blob, wrapped in profiles:
                checked += 2
                try:
                    name = self._data.open(name_blob, "profiles", pid, "name").decode()
                    if lookup_id(self._mac, name) != look:
                        failures.append(IntegrityError("profiles", pid, "lookup", "does not match the profile name"))
                except IntegrityError as exc:
                    failures.append(exc)
                try:
                    sealers[pid] = self._profile_sealer(pid, wrapped)
                except IntegrityError as exc:
                    failures.append(exc)
            n_events = self._verify_rows(conn, "events", EVENT_COLUMNS, sealers, profiles, failures)
            n_art = self._verify_rows(conn, "artefacts", ARTEFACT_COLUMNS, sealers, profiles, failures)
            failures.extend(self._event_state_failures(conn))
            failures.extend(self._ledger_failures(conn))
        checked += n_events * len(EVENT_COLUMNS) + n_art * len(ARTEFACT_COLUMNS)
        m = self._meta
        return VerifyReport(
            checked=checked, failures=failures, profiles=len(profiles), events=n_events, artefacts=n_art,
            kdf=f"scrypt n={m['kdf_n']} r={m['kdf_r']} p={m['kdf_p']}", fast_kdf=m.get("kdf_fast") == "1",
            sqlite_check=sqlite_check,
        )

    # ---------------------------------------------------------------- internals
    def _ledger_failures(self, conn: sqlite3.Connection) -> list[IntegrityError]:
        """The ledger's chain, head and sealed state, checked with the device key."""
        try:
            signer = self._signing(conn)
        except (IntegrityError, ValueError):
            signer = None  # already reported by verify
        try:
            problems = Ledger(self.db, signer=signer).verify()
        except LedgerError as exc:
            problems = [str(exc)]
        return [StateMismatch("ledger", "chain", "records", p) for p in problems]

    def _verify_rows(self, conn, table, columns, sealers, profiles, failures) -> int:
        known = {row[0] for row in profiles}
        n = 0
        for row in conn.execute(f"SELECT id, profile, {', '.join(columns)} FROM {table}"):
            n += 1
            rid, pid, blobs = row[0], row[1], row[2:]
            if pid not in known:
                failures.append(IntegrityError(table, rid, "profile", "belongs to no profile"))
                continue
            sealer = sealers.get(pid)
            if sealer is None:
                failures.append(IntegrityError(table, rid, "profile", "its profile key is damaged"))
                continue
            for col, blob in zip(columns, blobs):
                try:
                    plain = sealer.open(blob, table, rid, col)
                except IntegrityError as exc:
                    failures.append(exc)
                    continue
                if (table, col) == ("events", "ts"):
                    problem = _stored_ts_problem(plain)
                    if problem:
                        failures.append(IntegrityError(table, rid, col, problem))
        return n

    def _reseal_events(self, conn: sqlite3.Connection, pid: int, old: Sealer, new: Sealer) -> None:
        rows = conn.execute("SELECT id, ts, event, context, text FROM events WHERE profile = ?", (pid,)).fetchall()
        if not rows:
            return
        ids = [r[0] for r in rows]
        cols = []
        for j, col in enumerate(EVENT_COLUMNS, start=1):
            plain = [old.open(r[j], "events", r[0], col) for r in rows]
            cols.append(new.seal_many(plain, "events", ids, col))
        conn.executemany("UPDATE events SET ts = ?, event = ?, context = ?, text = ? WHERE id = ?", zip(*cols, ids))

    def _reseal_artefacts(self, conn: sqlite3.Connection, pid: int, old: Sealer, new: Sealer, mac: bytes) -> None:
        rows = conn.execute("SELECT id, kind, name, data, meta FROM artefacts WHERE profile = ?", (pid,)).fetchall()
        for rid, *blobs in rows:
            plain = [old.open(b, "artefacts", rid, c) for c, b in zip(ARTEFACT_COLUMNS, blobs)]
            sealed = [new.seal(v, "artefacts", rid, c) for c, v in zip(ARTEFACT_COLUMNS, plain)]
            look = lookup_id(mac, str(pid), plain[0].decode(), plain[1].decode())
            conn.execute(
                "UPDATE artefacts SET lookup = ?, kind = ?, name = ?, data = ?, meta = ? WHERE id = ?", (look, *sealed, rid)
            )

    def _set_data_key(self, data_key: bytes, data_key_id: str) -> None:
        self._data_key = data_key
        self._data_key_id = data_key_id
        self._data = Sealer(data_key)
        self._mac = mac_subkey(data_key)
        self._profile_keys: dict[int, tuple[bytes, Sealer]] = {}

    def _conn_or_fail(self) -> sqlite3.Connection:
        if self._conn is None:
            raise VaultError(f"vault {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (serialises writers across processes; waits up to the busy timeout)."""
        with self._lock:
            conn = self._conn_or_fail()
            nested = conn.in_transaction  # someone (e.g. privacy/) holds a transaction: join it via a savepoint
            conn.execute("SAVEPOINT vault_write" if nested else "BEGIN IMMEDIATE")
            try:
                self._refresh_keys(conn)
                yield conn
            except BaseException:
                if nested:
                    conn.execute("ROLLBACK TO vault_write")
                    conn.execute("RELEASE vault_write")
                else:
                    conn.rollback()
                raise
            if nested:
                conn.execute("RELEASE vault_write")
            else:
                conn.commit()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for reads that span several statements."""
        with self._lock:
            conn = self._conn_or_fail()
            if conn.in_transaction:
                self._refresh_keys(conn)
                yield conn
                return
            conn.execute("BEGIN")
            try:
                self._refresh_keys(conn)
                yield conn
            finally:
                conn.rollback()

    def _refresh_keys(self, conn: sqlite3.Connection) -> None:
        """Pick up a data-key rotation made by another process (same passphrase)."""
        current = self._meta_value(conn, "data_key_id")
        if current == self._data_key_id:
            return
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("kek_check") != kek_check(self._kek):
            raise VaultChanged(f"the passphrase of {self.path} was changed by another process; open it again")
        self._meta = meta
        self._set_data_key(_unwrap_data_key(meta, self._kek, self.path), current)

    def _check_own_kek(self, conn: sqlite3.Connection) -> None:
        if self._meta_value(conn, "kek_check") != kek_check(self._kek):
            raise VaultChanged(f"the passphrase of {self.path} was changed by another process; open it again")

    def _meta_value(self, conn: sqlite3.Connection, key: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise VaultCorrupted(f"{self.path}: meta key {key!r} is missing")
        return row[0]

    def _next_id(self, conn: sqlite3.Connection, table: str) -> int:
        """Next never-used row id (AUTOINCREMENT's counter), known before sealing so it can go in the AD."""
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
        return max(seq[0] if seq else 0, top or 0) + 1

    def _profile_row(self, conn: sqlite3.Connection, name: str) -> tuple[int, bytes] | None:
        return conn.execute("SELECT id, wrapped_key FROM profiles WHERE lookup = ?", (lookup_id(self._mac, name),)).fetchone()

    def _profile(self, conn: sqlite3.Connection, name: str) -> tuple[int, Sealer]:
        row = self._profile_row(conn, name)
        if row is None:
            raise ProfileNotFound(f"no profile {name!r} in {self.path}")
        return row[0], self._profile_sealer(*row)

    def _profile_sealer(self, pid: int, wrapped: bytes) -> Sealer:
        cached = self._profile_keys.get(pid)
        if cached is not None and cached[0] == wrapped:
            return cached[1]
        sealer = Sealer(self._data.open(wrapped, "profiles", pid, "wrapped_key"))
        self._profile_keys[pid] = (wrapped, sealer)
        return sealer

    def _ensure_profile(self, conn: sqlite3.Connection, name: str) -> int:
        """The profile's row id, creating the profile (and its key) inside the current write transaction."""
        row = self._profile_row(conn, name)
        if row is not None:
            self._profile_sealer(*row)
            return row[0]
        pid = self._next_id(conn, "profiles")
        pkey = new_key()
        wrapped = self._data.seal(pkey, "profiles", pid, "wrapped_key")
        conn.execute(
            "INSERT INTO profiles(id, lookup, name, wrapped_key) VALUES (?, ?, ?, ?)",
            (pid, lookup_id(self._mac, name), self._data.seal(name.encode(), "profiles", pid, "name"), wrapped),
        )
        self._profile_keys[pid] = (wrapped, Sealer(pkey))
        return pid

    def _scrub(self) -> None:
        """Remove deleted or superseded bytes from the file, WAL and free pages (secure_delete is on)."""
        with self._lock:
            conn = self._conn_or_fail()
            if conn.in_transaction:
                self._needs_scrub = True
                return
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            try:
                conn.execute("VACUUM")
                vacuumed = True
            except sqlite3.OperationalError:
                vacuumed = False  # another connection is mid-transaction; try again at close()
            busy = 1
            for _ in range(3):
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                time.sleep(0.2)
            self._needs_scrub = bool(busy) or not vacuumed


_DIGEST_MOD = 2**128


def _ids_digest(pid: int, ids: Iterable[int]) -> int:
    """An additive digest of a profile's event row ids (updated incrementally; order-free)."""
    total = 0
    for rid in ids:
        total += int.from_bytes(hashlib.sha256(f"{pid}:{rid}".encode()).digest()[:16], "big")
    return total % _DIGEST_MOD


def _stored_ts_problem(plain: bytes) -> str | None:
    """Why a stored timestamp fails today's input check (it predates it): readers skip such rows."""
    try:
        problem = timestamp_problem(datetime.fromisoformat(plain.decode()))
    except (UnicodeDecodeError, ValueError):
        problem = "not an ISO 8601 timestamp"
    return f"{problem}: stored before input validation, skipped by readers (export, then forget and re-import)" if problem else None


def _check_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str) or not passphrase:
        raise VaultError("the passphrase must be a non-empty string")


def _unwrap_data_key(meta: dict[str, str], kek: bytes, path: Path) -> bytes:
    if meta.get("kek_check") != kek_check(kek):
        raise WrongPassphrase(f"wrong passphrase for vault {path} (nothing was changed)")
    try:
        return Sealer(kek).open(bytes.fromhex(meta["wrapped_data_key"]), *_META_DATA_KEY)
    except (IntegrityError, KeyError, ValueError):
        raise VaultCorrupted(f"{path}: the wrapped data key is damaged; the vault cannot be opened") from None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
