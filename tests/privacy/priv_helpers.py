"""Helpers for the privacy tests: a plain SQLite file with a device key, releases, the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.accountant import SubsampledGaussian
from privacy.budget import ReleaseGate
from privacy.ledger import META_TABLE, PUBLIC_KEY_META, Ledger, public_key_hex

REPO = Path(__file__).resolve().parents[2]
# What a release from a real device's path records: noise from the OS CSPRNG (the gate requires the key).
CSPRNG = {"rng": "os-csprng"}


def sha(data: bytes | str) -> str:
    """SHA-256 hex of some bytes (stands for an adapter or update artefact)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def signed_db(path: Path) -> tuple[sqlite_utils.Database, Ed25519PrivateKey]:
    """A plain SQLite file holding a fresh device public key in meta and a started chain, as a vault does."""
    key = Ed25519PrivateKey.generate()
    db = sqlite_utils.Database(path)
    db[META_TABLE].insert({"key": PUBLIC_KEY_META, "value": public_key_hex(key)}, pk="key")
    Ledger(db, signer=key).initialise()
    return db, key


def fill(gate: ReleaseGate, n: int = 5) -> list:
    """Commit ``n`` small releases alternating between two profiles and both units."""
    recs = []
    for i in range(n):
        profile = "alice" if i % 2 == 0 else "bob"
        unit = "record" if i % 3 else "user"
        mech = SubsampledGaussian(1.0 + 0.1 * i, 0.01, 100 * (i + 1))
        recs.append(gate.commit(profile, unit, mech, sha(f"artefact {i}"), details={"i": i, **CSPRNG}))
    return recs


def cli(*args: str, env_pass: str | None = None) -> subprocess.CompletedProcess:
    """The real `homebody` CLI in a subprocess (exit code and stderr as a user sees them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOMEBODY_PASSPHRASE", "HOMEBODY_VAULT")}
    env["HF_HUB_OFFLINE"] = "1"
    if env_pass is not None:
        env["HOMEBODY_PASSPHRASE"] = env_pass
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, timeout=120)
