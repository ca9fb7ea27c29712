"""The signed, hash-chained ledger of privacy releases and budget policies, in the vault's SQLite file.

Every record holds what an auditor needs and nothing personal: sequence number, kind (a
``release`` or a ``policy`` change), time, profile *id* (a keyed hash of the profile name, never
the name), unit, mechanism and parameters, accountant, delta, epsilon after this release
(composed over all that profile+unit's releases), the artefact's SHA-256, the predecessor
record's SHA-256 and an Ed25519 signature by the device key over the record's canonical JSON.

One chain spans all profiles of the file (so deleting a whole profile's records breaks it too).
It starts with a signed genesis *head* (seq 0), and the signed head (table ``ledger_head``) moves
with every append, so deleting records at the end, or the whole chain, is detectable with the
public key alone. The chain's length and head are also kept in a *sealed state* (AES-GCM under a
key derived from the device signing key, table ``sealed_state``), updated in the same write
transaction as each append; the vault adds its per-profile event counts to the same sealed state.
A rollback of the whole file to an older copy is detectable only against an exported receipt
(:meth:`Ledger.receipt`, :meth:`Ledger.check_receipt`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from privacy.accountant import SubsampledGaussian
from privacy.errors import HomebodyError

LEDGER_TABLE = "ledger"
HEAD_TABLE = "ledger_head"
META_TABLE = "meta"
PUBLIC_KEY_META = "device_public_key"
SEALED_TABLE = "sealed_state"
GENESIS = "0" * 64
RECORD_VERSION = 2
UNITS = ("record", "user")
RELEASE, POLICY = "release", "policy"
KINDS = (RELEASE, POLICY)
PROFILE_ID_PREFIX = "pid-"
_PROFILE_ID = re.compile(r"^pid-[0-9a-f]{32}$")
_HEAD_DOMAIN = b"homebody-ledger-head\x00"
_RECEIPT_FORMAT = "homebody-ledger-receipt"
_SEALED_AD = b"homebody-sealed-state|1"


class LedgerError(HomebodyError):
    """The ledger cannot be read or written as asked (no key, wrong key, bad record)."""


class LedgerTampered(HomebodyError):
    """Verification found problems; ``problems`` names each affected record."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "unknown problem"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"ledger verification failed: {first}{more}")


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _eps_to_json(eps: float) -> float | str:
    return "inf" if math.isinf(eps) else eps


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Hex of the raw 32-byte public key (the format of ``meta.device_public_key``)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def load_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """Accept a key object, its raw 32 bytes or their hex."""
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise LedgerError(f"not an Ed25519 public key (need 32 raw bytes or 64 hex digits): {exc}") from exc


def device_public_key(db: sqlite_utils.Database) -> Ed25519PublicKey | None:
    """The device's public key from ``meta(key, value)``, or None when the file has none."""
    if META_TABLE not in db.table_names():
        return None
    rows = list(db.query(f"select value from [{META_TABLE}] where key = ?", [PUBLIC_KEY_META]))
    if not rows:
        return None
    value = rows[0]["value"]
    return load_public_key(value.decode() if isinstance(value, bytes) else str(value))


@dataclass(frozen=True)
class LedgerRecord:
    """One release as recorded. ``epsilon`` is the profile+unit total after this release."""

    seq: int
    time: str
    profile: str
    unit: str
    mechanism: str
    params: dict
    accountant: str
    delta: float
    epsilon: float
    artefact_sha256: str
    prev_sha256: str
    details: dict = field(default_factory=dict)
    signature: str = ""
    kind: str = RELEASE

    def body(self) -> dict:
        """Everything that is signed and hashed (all fields but the signature)."""
        return {
            "v": RECORD_VERSION,
            "kind": self.kind,
            "seq": self.seq,
            "time": self.time,
            "profile": self.profile,
            "unit": self.unit,
            "mechanism": self.mechanism,
            "params": self.params,
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon": _eps_to_json(self.epsilon),
            "artefact_sha256": self.artefact_sha256,
            "prev_sha256": self.prev_sha256,
            "details": self.details,
        }

    def canonical(self) -> bytes:
        """The signed bytes."""
        return canonical_json(self.body())

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical body; the next record's ``prev_sha256``."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def release(self) -> SubsampledGaussian | None:
        """The accounted mechanism, or None for a non-private release (epsilon = inf)."""
        if self.kind != RELEASE:
            raise LedgerError(f"{self.label()} is a {self.kind} entry, not a release")
        if self.mechanism == "non-private" or not self.params:
            return None
        p = self.params
        return SubsampledGaussian(float(p["noise_multiplier"]), float(p["sample_rate"]), int(p["steps"]))

    def label(self) -> str:
        """How problems name this record."""
        what = "" if self.kind == RELEASE else f"{self.kind} entry, "
        return f"record seq {self.seq} ({what}profile {self.profile!r}, unit {self.unit}, {self.time})"

    def to_dict(self) -> dict:
        """A JSON-friendly dict (reports)."""
        out = self.body()
        out.update(sha256=self.sha256, signature=self.signature)
        return out


def _private_bytes(signer: Ed25519PrivateKey) -> bytes:
    return signer.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def derived_key(signer: Ed25519PrivateKey, purpose: str) -> bytes:
    """A 256-bit key for ``purpose`` derived from the device signing key (a vault secret)."""
    return hmac.new(_private_bytes(signer), b"homebody/v1/" + purpose.encode(), hashlib.sha256).digest()


def is_profile_id(value: object) -> bool:
    """Whether ``value`` is a ledger profile id (``pid-`` + 32 hex digits) rather than a name."""
    return isinstance(value, str) and _PROFILE_ID.match(value) is not None


def profile_id(signer: Ed25519PrivateKey, name: str) -> str:
    """The id a profile name is stored under in the ledger: a keyed hash, so the file holds no name.

    Keyed by the device signing key: the same name keeps its id (and its spent budget) across
    ``forget`` and data-key rotation, and only the owner (passphrase) can link an id to a name.
    """
    mac = hmac.new(derived_key(signer, "ledger-profile-id"), name.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return PROFILE_ID_PREFIX + mac.hexdigest()[:32]


def _sealed_row(conn: sqlite3.Connection) -> bytes | None:
    try:
        row = conn.execute(f"SELECT blob FROM [{SEALED_TABLE}] WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # no such table
        return None
    return None if row is None else row[0]


def has_sealed_state(conn: sqlite3.Connection) -> bool:
    """Whether the file holds a sealed state row (checkable without any key)."""
    return _sealed_row(conn) is not None


def load_sealed_state(conn: sqlite3.Connection, signer: Ed25519PrivateKey) -> dict | None:
    """The sealed state dict (``ledger``: seq+sha256, the vault's ``events``...), None when absent.

    Raises :class:`LedgerError` when it exists but does not open (edited, or not this device's).
    """
    blob = _sealed_row(conn)
    if blob is None:
        return None
    try:
        raw = AESGCM(derived_key(signer, "sealed-state")).decrypt(bytes(blob[:12]), bytes(blob[12:]), _SEALED_AD)
        state = json.loads(raw)
    except Exception:  # InvalidTag, a truncated blob, bad JSON: all mean the same to the user
        raise LedgerError("the sealed state does not open: it was edited, or it is not this device's") from None
    if not isinstance(state, dict):
        raise LedgerError("the sealed state is damaged")
    return state


def store_sealed_state(conn: sqlite3.Connection, signer: Ed25519PrivateKey, state: dict) -> None:
    """Seal ``state`` and write it; call inside the caller's write transaction."""
    nonce = os.urandom(12)
    blob = nonce + AESGCM(derived_key(signer, "sealed-state")).encrypt(nonce, canonical_json(state), _SEALED_AD)
    conn.execute(f"CREATE TABLE IF NOT EXISTS [{SEALED_TABLE}] (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
    conn.execute(f"INSERT OR REPLACE INTO [{SEALED_TABLE}] (id, blob) VALUES (1, ?)", [blob])


@contextmanager
def write_transaction(conn: sqlite3.Connection, name: str = "homebody_write") -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction (other writers wait), or a savepoint inside the caller's."""
    nested = conn.in_transaction
    conn.execute(f"SAVEPOINT {name}" if nested else "BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if nested:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        else:
            conn.rollback()
        raise
    if nested:
        conn.execute(f"RELEASE {name}")
    else:
        conn.commit()


# Signatures already found valid, as (public key hex, SHA-256 of the signed bytes, signature hex).
# Validity is a pure function of those three, so re-verifying the chain before every check only
# pays Ed25519 for records it has not seen (any edit changes the digest and is checked afresh).
_VERIFIED: set[tuple[str, str, str]] = set()
_VERIFIED_MAX = 200_000


def _signature_ok_cached(key: Ed25519PublicKey, key_hex: str, signature_hex: str, message: bytes) -> bool:
    entry = (key_hex, hashlib.sha256(message).hexdigest(), signature_hex)
    if entry in _VERIFIED:
        return True
    if not _signature_ok(key, signature_hex, message):
        return False
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED.add(entry)
    return True


def _signature_ok(key: Ed25519PublicKey | None, signature_hex: str, message: bytes) -> bool:
    if key is None or not signature_hex:
        return False
    try:
        key.verify(bytes.fromhex(signature_hex), message)
        return True
    except (InvalidSignature, ValueError):
        return False


class Ledger:
    """Read, append to and verify the ledger tables of one SQLite file.

    ``signer`` (the device key, from the unlocked vault) lets it name profiles (their ids are keyed
    hashes), open the sealed state and write; without it the ledger can be read by profile id and
    verified with the public key alone.
    """

    def __init__(self, db: sqlite_utils.Database, signer: Ed25519PrivateKey | None = None):
        # Tables are created on the first append, so reading (verify, reports, budget checks)
        # works on a read-only connection and never writes to the file.
        self.db = db
        self.signer = signer

    def _has(self, table: str) -> bool:
        return table in self.db.table_names()

    def _ensure_tables(self) -> None:
        conn = self.db.conn
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS [{LEDGER_TABLE}] (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT, "
            "profile TEXT, unit TEXT, mechanism TEXT, params TEXT, accountant TEXT, delta FLOAT, epsilon FLOAT, "
            "artefact_sha256 TEXT, prev_sha256 TEXT, details TEXT, sha256 TEXT, signature TEXT)"
        )
        conn.execute(f"CREATE TABLE IF NOT EXISTS [{HEAD_TABLE}] (id INTEGER PRIMARY KEY, seq INTEGER, sha256 TEXT, "
                     "signature TEXT)")

    def required(self) -> bool:
        """Whether this file must hold a chain: a device file (public key in meta) or one that had a chain.

        A device file's chain starts at creation (:meth:`initialise`), so a missing chain is a deleted one.
        """
        return any(self._has(t) for t in (LEDGER_TABLE, HEAD_TABLE, SEALED_TABLE)) or device_public_key(self.db) is not None

    def initialise(self, signer: Ed25519PrivateKey | None = None) -> None:
        """Start the chain: tables, a signed genesis head (seq 0) and the sealed state. Idempotent."""
        signer = self._signer(signer)
        self._check_signer(signer)
        with write_transaction(self.db.conn, "ledger_init") as conn:
            if self.head() is not None:
                return
            self._ensure_tables()
            self._move_head(conn, signer, 0, GENESIS)

    def profile_key(self, profile: str, signer: Ed25519PrivateKey | None = None) -> str:
        """The id ``profile`` is stored under: itself if it already is an id, else its keyed hash."""
        if is_profile_id(profile):
            return profile
        signer = signer or self.signer
        if signer is None:
            raise LedgerError(
                f"the ledger stores profiles as keyed hashes, not names: reading profile {profile!r} by name needs the "
                "device key (unlock the vault with its passphrase), or give the profile's id (pid-...)"
            )
        return profile_id(signer, profile)

    def names(self, candidates: list[str]) -> dict[str, str]:
        """id -> name for the owner's ``candidates`` (the vault's profile names); needs the signer."""
        if self.signer is None:
            return {}
        return {profile_id(self.signer, n): n for n in candidates}

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _from_row(row: dict) -> LedgerRecord:
        return LedgerRecord(
            seq=int(row["seq"]), time=row["time"], profile=row["profile"], unit=row["unit"],
            mechanism=row["mechanism"], params=json.loads(row["params"] or "{}"), accountant=row["accountant"],
            delta=float(row["delta"]), epsilon=float(row["epsilon"]), artefact_sha256=row["artefact_sha256"],
            prev_sha256=row["prev_sha256"], details=json.loads(row["details"] or "{}"),
            signature=row["signature"] or "", kind=row["kind"],
        )

    def records(self, profile: str | None = None, unit: str | None = None, kind: str | None = RELEASE) -> list[LedgerRecord]:
        """Records in sequence order: releases by default (``kind=None``: every entry), optionally
        only one profile (a name, with the signer, or an id) and/or unit."""
        where, args = [], []
        if profile is not None:
            where.append("profile = ?")
            args.append(self.profile_key(profile))
        if unit is not None:
            where.append("unit = ?")
            args.append(unit)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if not self._has(LEDGER_TABLE):
            return []
        self._check_format()
        sql = f"select * from [{LEDGER_TABLE}]" + (" where " + " and ".join(where) if where else "") + " order by seq"
        return [self._from_row(r) for r in self.db.query(sql, args)]

    def latest_policy(self, profile: str, unit: str) -> LedgerRecord | None:
        """The profile+unit's newest policy entry, or None."""
        recs = self.records(profile, unit, kind=POLICY)
        return recs[-1] if recs else None

    def profiles(self) -> list[str]:
        """Profile ids that have at least one record (release or policy)."""
        if not self._has(LEDGER_TABLE):
            return []
        return [r["profile"] for r in self.db.query(f"select distinct profile from [{LEDGER_TABLE}] order by profile")]

    def head(self) -> dict | None:
        """The signed head row (seq, sha256, signature) or None when there is none."""
        if not self._has(HEAD_TABLE):
            return None
        rows = list(self.db.query(f"select seq, sha256, signature from [{HEAD_TABLE}] where id = 1"))
        return rows[0] if rows else None

    def _check_format(self) -> None:
        cols = {c.name for c in self.db[LEDGER_TABLE].columns}
        if "kind" not in cols:
            raise LedgerError(
                "this ledger was written by an older homebody (record format 1, profile names in clear, unsigned "
                "budget policies): it cannot be verified by this version; create a new vault (homebody vault init) "
                "and import your events again"
            )

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): check and append inside it are atomic across processes."""
        with write_transaction(self.db.conn, "ledger_write") as conn:
            yield conn

    def append(
        self,
        *,
        time: str,
        profile: str,
        unit: str,
        mechanism: str,
        params: dict,
        accountant: str,
        delta: float,
        epsilon: float,
        artefact_sha256: str,
        details: dict | None = None,
        signer: Ed25519PrivateKey | None = None,
        kind: str = RELEASE,
    ) -> LedgerRecord:
        """Verify the chain, then append one record and move the signed head and sealed state, in one transaction.

        A broken chain raises :class:`LedgerTampered` and writes nothing: a new head is never signed over it.
        """
        signer = self._signer(signer)
        with self.transaction():
            self.check_or_raise()
            return self.append_verified(
                time=time, profile=profile, unit=unit, mechanism=mechanism, params=params, accountant=accountant,
                delta=delta, epsilon=epsilon, artefact_sha256=artefact_sha256, details=details, signer=signer, kind=kind,
            )

    def append_verified(self, *, time: str, profile: str, unit: str, mechanism: str, params: dict, accountant: str,
                        delta: float, epsilon: float, artefact_sha256: str, details: dict | None,
                        signer: Ed25519PrivateKey, kind: str = RELEASE) -> LedgerRecord:
        """Append inside a :meth:`transaction` whose chain the caller has just verified (``check_or_raise``)."""
        conn = self.db.conn
        if not conn.in_transaction:
            raise LedgerError("append_verified must run inside Ledger.transaction()")
        if unit not in UNITS:
            raise LedgerError(f"unit must be one of {UNITS}, got {unit!r}")
        if kind not in KINDS:
            raise LedgerError(f"kind must be one of {KINDS}, got {kind!r}")
        if not (isinstance(artefact_sha256, str) and len(artefact_sha256) == 64 and _is_hex(artefact_sha256)):
            raise LedgerError(f"artefact_sha256 must be 64 hex digits, got {artefact_sha256!r}")
        self._check_signer(signer)
        try:
            canonical_json(details or {})
            canonical_json(params)
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"details and params must be plain JSON (no NaN): {exc}") from exc
        if self.head() is None:  # a fresh file (check_or_raise passed, so no chain is required here)
            self._ensure_tables()
            self._move_head(conn, signer, 0, GENESIS)
        last = list(self.db.query(f"select seq, sha256 from [{LEDGER_TABLE}] order by seq desc limit 1"))
        seq, prev = (last[0]["seq"] + 1, last[0]["sha256"]) if last else (1, GENESIS)
        rec = LedgerRecord(
            seq=seq, time=time, profile=self.profile_key(profile, signer), unit=unit, mechanism=mechanism,
            params=dict(params), accountant=accountant, delta=float(delta), epsilon=float(epsilon),
            artefact_sha256=artefact_sha256, prev_sha256=prev, details=dict(details or {}), kind=kind,
        )
        rec = replace(rec, signature=signer.sign(rec.canonical()).hex())
        digest = rec.sha256
        conn.execute(
            f"insert into [{LEDGER_TABLE}] (seq, kind, time, profile, unit, mechanism, params, accountant, delta, "
            "epsilon, artefact_sha256, prev_sha256, details, sha256, signature) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [rec.seq, rec.kind, rec.time, rec.profile, rec.unit, rec.mechanism, canonical_json(rec.params).decode(),
             rec.accountant, rec.delta, rec.epsilon, rec.artefact_sha256, rec.prev_sha256,
             canonical_json(rec.details).decode(), digest, rec.signature],
        )
        self._move_head(conn, signer, seq, digest)
        return rec

    def _move_head(self, conn: sqlite3.Connection, signer: Ed25519PrivateKey, seq: int, digest: str) -> None:
        """Sign the new head and bind it into the sealed state (the caller holds the write transaction)."""
        conn.execute(
            f"insert or replace into [{HEAD_TABLE}] (id, seq, sha256, signature) values (1, ?, ?, ?)",
            [seq, digest, signer.sign(_head_message(seq, digest)).hex()],
        )
        state = load_sealed_state(conn, signer) or {}
        state["ledger"] = {"seq": seq, "sha256": digest}
        store_sealed_state(conn, signer, state)

    def _signer(self, signer: Ed25519PrivateKey | None) -> Ed25519PrivateKey:
        signer = signer or self.signer
        if signer is None:
            raise LedgerError("writing to the ledger needs the device signing key (unlock the vault with its passphrase)")
        return signer

    def _check_signer(self, signer: Ed25519PrivateKey) -> None:
        stored = device_public_key(self.db)
        if stored is not None and public_key_hex(stored) != public_key_hex(signer):
            raise LedgerError("the signing key is not this device's key (meta.device_public_key differs)")

    # -- verifying -------------------------------------------------------------------------
    def _key(self, public_key: Ed25519PublicKey | bytes | str | None) -> Ed25519PublicKey | None:
        """The key to verify with: the one given, else the device key's (the signer's), else meta's.

        The signer comes first: a file whose meta key and whole chain were replaced by someone
        else's must not verify for the device that holds the real key.
        """
        if public_key is not None:
            return load_public_key(public_key)
        if self.signer is not None:
            return self.signer.public_key()
        return device_public_key(self.db)

    def verify(self, public_key: Ed25519PublicKey | bytes | str | None = None) -> list[str]:
        """Every problem found, each naming the record concerned; [] for an intact ledger.

        ``public_key`` defaults to ``meta.device_public_key`` (else the signer's); without any key,
        signatures cannot be checked and that is itself reported. With the signer, the chain is
        also compared with the sealed state.
        """
        key = self._key(public_key)
        problems: list[str] = []
        if key is None:
            problems.append("no device public key (meta.device_public_key): signatures cannot be checked")
        stored = device_public_key(self.db)
        if key is not None and stored is not None and public_key_hex(stored) != public_key_hex(key):
            problems.append("meta.device_public_key differs from the key used to verify: it was replaced (with a "
                            "chain signed by another key?), or the wrong key was given")
        if self._has(LEDGER_TABLE):
            self._check_format()
        rows = list(self.db.query(f"select * from [{LEDGER_TABLE}] order by seq")) if self._has(LEDGER_TABLE) else []
        prev_hash, expected_seq, prev_bad, last = GENESIS, 1, False, None
        for row in rows:
            try:
                rec = self._from_row(row)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"record seq {row.get('seq')}: unreadable, edited ({exc})")
                prev_hash, expected_seq, prev_bad = row.get("sha256") or "", (row.get("seq") or 0) + 1, True
                continue
            own = self._record_problem(rec, row, key, len(rows))
            gap = rec.seq != expected_seq
            if gap:
                missing = f"seq {expected_seq}" if rec.seq == expected_seq + 1 else f"seq {expected_seq}..{rec.seq - 1}"
                problems.append(f"record {missing} missing (deleted) before {rec.label()}")
            if own:
                problems.append(own)
            elif rec.prev_sha256 != prev_hash and not gap and not prev_bad:
                problems.append(
                    f"{rec.label()} does not follow record seq {expected_seq - 1}: its predecessor hash differs "
                    "(a record was deleted, inserted or moved before it)"
                )
            prev_hash, expected_seq, prev_bad, last = rec.sha256, rec.seq + 1, bool(own), rec
        problems.extend(self._head_problems(last, key))
        problems.extend(self._seal_problems(last))
        return problems

    def check(self, public_key: Ed25519PublicKey | bytes | str | None = None) -> int:
        """Raise :class:`LedgerTampered` on any problem; return the number of entries otherwise."""
        self.check_or_raise(public_key)
        return len(self.records(kind=None))

    def check_or_raise(self, public_key: Ed25519PublicKey | bytes | str | None = None) -> None:
        """Raise :class:`LedgerTampered` naming every problem (the gate calls this before every check)."""
        problems = self.verify(public_key)
        if problems:
            raise LedgerTampered(problems)

    def _record_problem(self, rec: LedgerRecord, row: dict, key: Ed25519PublicKey | None, n: int) -> str | None:
        """Why this record is not authentic as it stands, or None."""
        if key is None:
            return None if row["sha256"] == rec.sha256 else f"{rec.label()}: content was edited (hash differs)"
        if _signature_ok_cached(key, public_key_hex(key), rec.signature, rec.canonical()):
            return None
        if not rec.signature:
            return f"{rec.label()}: not signed (inserted without the device key?)"
        for seq in range(1, max(n, rec.seq) + 2):
            if seq != rec.seq and _signature_ok(key, rec.signature, replace(rec, seq=seq).canonical()):
                return f"{rec.label()}: was signed as seq {seq} (records were reordered)"
        if row["sha256"] != rec.sha256:
            return f"{rec.label()}: content was edited (signature and hash do not match it)"
        return f"{rec.label()}: signature invalid (inserted or forged record)"

    def _head_problems(self, last: LedgerRecord | None, key: Ed25519PublicKey | None) -> list[str]:
        head = self.head()
        if head is None:
            if last is not None:
                return [f"ledger head missing after {last.label()}"]
            if self.required():
                return ["ledger missing: this device file's chain (at least its signed genesis head) was deleted"]
            return []
        out = []
        if key is not None and not _signature_ok(key, head["signature"], _head_message(head["seq"], head["sha256"])):
            out.append(f"ledger head (seq {head['seq']}) signature invalid")
        last_seq, last_sha = (last.seq, last.sha256) if last is not None else (0, GENESIS)
        if last is None and head["seq"] > 0:
            out.append(f"ledger is empty but its head names seq {head['seq']}: all records deleted")
        elif head["seq"] > last_seq:
            rng = f"seq {last_seq + 1}" if head["seq"] == last_seq + 1 else f"seq {last_seq + 1}..{head['seq']}"
            out.append(f"record {rng} missing (deleted) after {last.label()}: the signed head names seq {head['seq']}")
        elif head["seq"] < last_seq:
            out.append(f"{last.label()}: appended after the signed head (seq {head['seq']}) (inserted)")
        elif head["sha256"] != last_sha:
            out.append("the signed genesis head does not match" if last is None
                       else f"{last.label()}: does not match the signed head (edited or replaced)")
        return out

    def _seal_problems(self, last: LedgerRecord | None) -> list[str]:
        conn = self.db.conn
        if not has_sealed_state(conn):
            return ["sealed ledger state missing (deleted)"] if self.required() else []
        if self.signer is None:
            return []  # it exists; opening it needs the device key
        try:
            state = load_sealed_state(conn, self.signer) or {}
        except LedgerError as exc:
            return [f"sealed ledger state: {exc}"]
        sealed = state.get("ledger") or {}
        seq, sha = (last.seq, last.sha256) if last is not None else (0, GENESIS)
        if sealed.get("seq") != seq or sealed.get("sha256") != sha:
            return [f"the ledger ends at seq {seq} but the vault's sealed state records seq {sealed.get('seq')}: "
                    "records were deleted or re-signed, or the ledger was restored from an older copy"]
        return []

    # -- receipts (rollback detection) ------------------------------------------------------
    def receipt(self) -> dict:
        """A receipt of the current signed head, to keep off the device: a later copy of this file must extend it.

        Needs no passphrase (it carries the head signature the device already made); refuses a broken chain.
        """
        self.check_or_raise()
        head = self.head()
        key = self._key(None)
        if head is None or key is None:
            raise LedgerError("this file has no signed ledger head to take a receipt of")
        return {"format": _RECEIPT_FORMAT, "version": 1, "public_key": public_key_hex(key), "seq": int(head["seq"]),
                "sha256": head["sha256"], "signature": head["signature"]}

    def check_receipt(self, receipt: dict, public_key: Ed25519PublicKey | bytes | str | None = None) -> list[str]:
        """Problems showing the file does not extend the receipt's chain (rolled back or replaced); [] if it does."""
        if not isinstance(receipt, dict) or receipt.get("format") != _RECEIPT_FORMAT:
            raise LedgerError("not a homebody ledger receipt (format field missing or wrong)")
        try:
            seq, sha, sig = int(receipt["seq"]), str(receipt["sha256"]), str(receipt["signature"])
            key = self._key(public_key)
            theirs = load_public_key(str(receipt["public_key"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"the receipt is malformed ({exc})") from None
        if key is None or public_key_hex(theirs) != public_key_hex(key):
            return ["the receipt was issued by another device key than this file's"]
        if not _signature_ok(key, sig, _head_message(seq, sha)):
            return ["the receipt's signature is invalid (edited receipt)"]
        if seq == 0:
            return [] if sha == GENESIS else ["the receipt names a genesis head that does not exist"]
        rows = list(self.db.query(f"select sha256 from [{LEDGER_TABLE}] where seq = ?", [seq])) if self._has(LEDGER_TABLE) else []
        head = self.head()
        if not rows:
            now = head["seq"] if head else 0
            return [f"rolled back: the receipt names seq {seq} but this ledger ends at seq {now} "
                    "(the file was restored from an older copy, or records were deleted)"]
        if rows[0]["sha256"] != sha:
            return [f"record seq {seq} differs from the receipt's: the chain was replaced after the receipt "
                    "(rolled back and written again)"]
        return []


def _head_message(seq: int, digest: str) -> bytes:
    return _HEAD_DOMAIN + canonical_json({"seq": int(seq), "sha256": digest})


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
        return True
    except ValueError:
        return False
