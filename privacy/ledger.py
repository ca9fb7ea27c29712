"""The signed, hash-chained ledger of privacy releases, kept in clear in the vault's SQLite file.

Every record holds what an auditor needs and nothing personal: sequence number, time, profile,
unit, mechanism and parameters, accountant, delta, epsilon after this release (composed over all
that profile+unit's releases), the artefact's SHA-256, the predecessor record's SHA-256 and an
Ed25519 signature by the device key over the record's canonical JSON.

One chain spans all profiles of the file (so deleting a whole profile's records breaks it too),
and a signed *head* (last seq + its hash, table ``ledger_head``) makes deleting records at the
end detectable. What a chain cannot detect is rolling the whole file back to an older copy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy.accountant import SubsampledGaussian
from privacy.errors import HomebodyError

LEDGER_TABLE = "ledger"
HEAD_TABLE = "ledger_head"
META_TABLE = "meta"
PUBLIC_KEY_META = "device_public_key"
GENESIS = "0" * 64
RECORD_VERSION = 1
UNITS = ("record", "user")
_HEAD_DOMAIN = b"homebody-ledger-head\x00"


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

    def body(self) -> dict:
        """Everything that is signed and hashed (all fields but the signature)."""
        return {
            "v": RECORD_VERSION,
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
        if self.mechanism == "non-private" or not self.params:
            return None
        p = self.params
        return SubsampledGaussian(float(p["noise_multiplier"]), float(p["sample_rate"]), int(p["steps"]))

    def label(self) -> str:
        """How problems name this record."""
        return f"record seq {self.seq} (profile {self.profile!r}, unit {self.unit}, {self.time})"

    def to_dict(self) -> dict:
        """A JSON-friendly dict (reports)."""
        out = self.body()
        out.update(sha256=self.sha256, signature=self.signature)
        return out


def _signature_ok(key: Ed25519PublicKey | None, signature_hex: str, message: bytes) -> bool:
    if key is None or not signature_hex:
        return False
    try:
        key.verify(bytes.fromhex(signature_hex), message)
        return True
    except (InvalidSignature, ValueError):
        return False


class Ledger:
    """Read, append to and verify the ledger tables of one SQLite file."""

    def __init__(self, db: sqlite_utils.Database):
        # Tables are created on the first append, so reading (verify, reports, budget checks)
        # works on a read-only connection and never writes to the file.
        self.db = db

    def _has(self, table: str) -> bool:
        return table in self.db.table_names()

    def _ensure_tables(self) -> None:
        if LEDGER_TABLE not in self.db.table_names():
            self.db[LEDGER_TABLE].create(
                {
                    "seq": int, "time": str, "profile": str, "unit": str, "mechanism": str, "params": str,
                    "accountant": str, "delta": float, "epsilon": float, "artefact_sha256": str,
                    "prev_sha256": str, "details": str, "sha256": str, "signature": str,
                },
                pk="seq",
            )
        if HEAD_TABLE not in self.db.table_names():
            self.db[HEAD_TABLE].create({"id": int, "seq": int, "sha256": str, "signature": str}, pk="id")

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _from_row(row: dict) -> LedgerRecord:
        return LedgerRecord(
            seq=int(row["seq"]), time=row["time"], profile=row["profile"], unit=row["unit"],
            mechanism=row["mechanism"], params=json.loads(row["params"] or "{}"), accountant=row["accountant"],
            delta=float(row["delta"]), epsilon=float(row["epsilon"]), artefact_sha256=row["artefact_sha256"],
            prev_sha256=row["prev_sha256"], details=json.loads(row["details"] or "{}"),
            signature=row["signature"] or "",
        )

    def records(self, profile: str | None = None, unit: str | None = None) -> list[LedgerRecord]:
        """Records in sequence order, optionally only one profile and/or unit."""
        where, args = [], []
        if profile is not None:
            where.append("profile = ?")
            args.append(profile)
        if unit is not None:
            where.append("unit = ?")
            args.append(unit)
        if not self._has(LEDGER_TABLE):
            return []
        sql = f"select * from [{LEDGER_TABLE}]" + (" where " + " and ".join(where) if where else "") + " order by seq"
        return [self._from_row(r) for r in self.db.query(sql, args)]

    def profiles(self) -> list[str]:
        """Profiles that have at least one record."""
        if not self._has(LEDGER_TABLE):
            return []
        return [r["profile"] for r in self.db.query(f"select distinct profile from [{LEDGER_TABLE}] order by profile")]

    def head(self) -> dict | None:
        """The signed head row (seq, sha256, signature) or None for an empty ledger."""
        if not self._has(HEAD_TABLE):
            return None
        rows = list(self.db.query(f"select seq, sha256, signature from [{HEAD_TABLE}] where id = 1"))
        return rows[0] if rows else None

    # -- writing ---------------------------------------------------------------------------
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
    ) -> LedgerRecord:
        """Append one record (and move the signed head) in one transaction."""
        if unit not in UNITS:
            raise LedgerError(f"unit must be one of {UNITS}, got {unit!r}")
        if not (isinstance(artefact_sha256, str) and len(artefact_sha256) == 64 and _is_hex(artefact_sha256)):
            raise LedgerError(f"artefact_sha256 must be 64 hex digits, got {artefact_sha256!r}")
        if signer is not None:
            self._check_signer(signer)
        try:
            canonical_json(details or {})
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"details must be plain JSON (no NaN): {exc}") from exc
        self._ensure_tables()
        conn = self.db.conn
        with conn:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")  # serialise appenders: read the tail and write it atomically
            last = list(self.db.query(f"select seq, sha256 from [{LEDGER_TABLE}] order by seq desc limit 1"))
            seq, prev = (last[0]["seq"] + 1, last[0]["sha256"]) if last else (1, GENESIS)
            rec = LedgerRecord(
                seq=seq, time=time, profile=profile, unit=unit, mechanism=mechanism, params=dict(params),
                accountant=accountant, delta=float(delta), epsilon=float(epsilon), artefact_sha256=artefact_sha256,
                prev_sha256=prev, details=dict(details or {}),
            )
            if signer is not None:
                rec = replace(rec, signature=signer.sign(rec.canonical()).hex())
            digest = rec.sha256
            self.db.conn.execute(
                f"insert into [{LEDGER_TABLE}] (seq, time, profile, unit, mechanism, params, accountant, delta, "
                "epsilon, artefact_sha256, prev_sha256, details, sha256, signature) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [rec.seq, rec.time, rec.profile, rec.unit, rec.mechanism, canonical_json(rec.params).decode(),
                 rec.accountant, rec.delta, rec.epsilon, rec.artefact_sha256, rec.prev_sha256,
                 canonical_json(rec.details).decode(), digest, rec.signature],
            )
            head_sig = signer.sign(_head_message(seq, digest)).hex() if signer is not None else ""
            self.db.conn.execute(
                f"insert or replace into [{HEAD_TABLE}] (id, seq, sha256, signature) values (1, ?, ?, ?)",
                [seq, digest, head_sig],
            )
        return rec

    def _check_signer(self, signer: Ed25519PrivateKey) -> None:
        stored = device_public_key(self.db)
        if stored is not None and public_key_hex(stored) != public_key_hex(signer):
            raise LedgerError("the signing key is not this device's key (meta.device_public_key differs)")

    # -- verifying -------------------------------------------------------------------------
    def verify(self, public_key: Ed25519PublicKey | bytes | str | None = None) -> list[str]:
        """Every problem found, each naming the record concerned; [] for an intact ledger.

        ``public_key`` defaults to ``meta.device_public_key``; without any key, signatures
        cannot be checked and that is itself reported.
        """
        key = load_public_key(public_key) if public_key is not None else device_public_key(self.db)
        problems: list[str] = []
        if key is None:
            problems.append("no device public key (meta.device_public_key): signatures cannot be checked")
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
        return problems

    def check(self, public_key: Ed25519PublicKey | bytes | str | None = None) -> int:
        """Raise :class:`LedgerTampered` on any problem; return the number of records otherwise."""
        problems = self.verify(public_key)
        if problems:
            raise LedgerTampered(problems)
        return len(self.records())

    def _record_problem(self, rec: LedgerRecord, row: dict, key: Ed25519PublicKey | None, n: int) -> str | None:
        """Why this record is not authentic as it stands, or None."""
        if key is None:
            return None if row["sha256"] == rec.sha256 else f"{rec.label()}: content was edited (hash differs)"
        if _signature_ok(key, rec.signature, rec.canonical()):
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
        if last is None:
            return [] if head is None else [f"ledger is empty but its head names seq {head['seq']}: all records deleted"]
        if head is None:
            return [f"ledger head missing after {last.label()}"]
        out = []
        if key is not None and not _signature_ok(key, head["signature"], _head_message(head["seq"], head["sha256"])):
            out.append(f"ledger head (seq {head['seq']}) signature invalid")
        if head["seq"] > last.seq:
            rng = f"seq {last.seq + 1}" if head["seq"] == last.seq + 1 else f"seq {last.seq + 1}..{head['seq']}"
            out.append(f"record {rng} missing (deleted) after {last.label()}: the signed head names seq {head['seq']}")
        elif head["seq"] < last.seq:
            out.append(f"{last.label()}: appended after the signed head (seq {head['seq']}) (inserted)")
        elif head["sha256"] != last.sha256:
            out.append(f"{last.label()}: does not match the signed head (edited or replaced)")
        return out


def _head_message(seq: int, digest: str) -> bytes:
    return _HEAD_DOMAIN + canonical_json({"seq": int(seq), "sha256": digest})


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
        return True
    except ValueError:
        return False
