"""The signed ledger: acceptance 2 (edit, delete, reorder, insert are detected and named) and its seams."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from privacy.budget import ReleaseGate
from privacy.ledger import GENESIS, Ledger, LedgerError, LedgerTampered, canonical_json
from simulations.cli import app

from .priv_helpers import cli, fill, sha, signed_db

runner = CliRunner()


@pytest.fixture(scope="module")
def ledger_template(tmp_path_factory) -> Path:
    """A file with 5 signed releases (two profiles, both units), built once per module."""
    path = tmp_path_factory.mktemp("ledger") / "device.db"
    db, key = signed_db(path)
    fill(ReleaseGate(db, signer=key, accountant="rdp"), 5)
    db.conn.close()
    return path


@pytest.fixture
def ledger_file(ledger_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template for each test to tamper with."""
    return Path(shutil.copy(ledger_template, tmp_path / "device.db"))


def verify(path: Path):
    return runner.invoke(app, ["audit", "verify", "--vault", str(path)])


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in statements:
            conn.execute(s)
    conn.close()


def test_untouched_ledger_verifies_and_chains(ledger_file: Path):
    res = verify(ledger_file)
    assert res.exit_code == 0, res.output
    assert "5 records" in res.output
    db = Ledger(__import__("sqlite_utils").Database(ledger_file))
    recs = db.records()
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_sha256 == GENESIS
    assert all(b.prev_sha256 == a.sha256 for a, b in zip(recs, recs[1:]))
    assert all(len(r.signature) == 128 for r in recs)


def test_acceptance2_edited_record_is_named(ledger_file: Path):
    sql(ledger_file, "update ledger set epsilon = 0.01 where seq = 3")
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert isinstance(res.exception, LedgerTampered)
    assert "record seq 3" in res.output and "edited" in res.output
    assert "record seq 2 " not in res.output and "record seq 4 " not in res.output


def test_acceptance2_edited_params_with_recomputed_hash_is_still_caught(ledger_file: Path):
    """An editor who recomputes the stored hash still cannot forge the signature."""
    db = __import__("sqlite_utils").Database(ledger_file)
    rec = Ledger(db).records()[1]
    forged = rec.body() | {"params": {**rec.params, "noise_multiplier": 9.0}}
    import hashlib

    sql(ledger_file, f"update ledger set params = '{json.dumps(forged['params'])}', "
                     f"sha256 = '{hashlib.sha256(canonical_json(forged)).hexdigest()}' where seq = 2")
    res = verify(ledger_file)
    assert res.exit_code != 0 and "record seq 2" in res.output


def test_acceptance2_deleted_record_is_named(ledger_file: Path):
    sql(ledger_file, "delete from ledger where seq = 2")
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert "record seq 2 missing (deleted)" in res.output


def test_acceptance2_deleted_last_record_is_named_by_the_signed_head(ledger_file: Path):
    sql(ledger_file, "delete from ledger where seq = 5")
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert "record seq 5 missing (deleted)" in res.output


def test_acceptance2_reordered_records_are_named(ledger_file: Path):
    sql(ledger_file, "update ledger set seq = 100 where seq = 2", "update ledger set seq = 2 where seq = 3",
        "update ledger set seq = 3 where seq = 100")
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert "record seq 2" in res.output and "signed as seq 3" in res.output
    assert "record seq 3" in res.output and "signed as seq 2" in res.output
    assert "reordered" in res.output


def test_acceptance2_inserted_record_is_named(ledger_file: Path):
    """A record inserted in the middle (later ones renumbered) and one appended at the end."""
    other = Ed25519PrivateKey.generate()  # the attacker's key, not the device's
    db = __import__("sqlite_utils").Database(ledger_file)
    recs = Ledger(db).records()
    sql(ledger_file, *[f"update ledger set seq = {s + 1} where seq = {s}" for s in (5, 4, 3)])
    fake = recs[1].body() | {"seq": 3, "prev_sha256": recs[1].sha256, "epsilon": 0.001}
    row = {**fake, "params": json.dumps(fake["params"]), "details": json.dumps(fake["details"]),
           "sha256": __import__("hashlib").sha256(canonical_json(fake)).hexdigest(),
           "signature": other.sign(canonical_json(fake)).hex()}
    row.pop("v")
    db["ledger"].insert(row)
    db.conn.commit()
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert "record seq 3" in res.output and ("inserted" in res.output or "forged" in res.output)


def test_acceptance2_appended_unsigned_record_is_named(ledger_file: Path):
    db = __import__("sqlite_utils").Database(ledger_file)
    last = Ledger(db).records()[-1]
    body = last.body() | {"seq": 6, "prev_sha256": last.sha256}
    row = {**body, "params": json.dumps(body["params"]), "details": json.dumps(body["details"]),
           "sha256": __import__("hashlib").sha256(canonical_json(body)).hexdigest(), "signature": ""}
    row.pop("v")
    db["ledger"].insert(row)
    db.conn.commit()
    res = verify(ledger_file)
    assert res.exit_code != 0
    assert "record seq 6" in res.output and "not signed" in res.output


def test_verify_exit_code_and_one_error_line_through_the_real_cli(ledger_file: Path):
    sql(ledger_file, "delete from ledger where seq = 4")
    out = cli("audit", "verify", "--vault", str(ledger_file))
    assert out.returncode == 1
    assert "record seq 4 missing (deleted)" in out.stdout
    assert out.stderr.strip().startswith("error: ledger verification failed") and "Traceback" not in out.stderr


def test_wrong_public_key_fails_every_record(ledger_file: Path):
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    res = runner.invoke(app, ["audit", "verify", "--vault", str(ledger_file), "--public-key", other])
    assert res.exit_code != 0
    assert all(f"record seq {i}" in res.output for i in range(1, 6))


def test_append_rejects_bad_input_and_foreign_signer(tmp_path: Path):
    db, key = signed_db(tmp_path / "d.db")
    ledger = Ledger(db)
    common = dict(time="2026-01-01T00:00:00+00:00", profile="p", mechanism="dp-sgd", params={}, accountant="pld",
                  delta=1e-5, epsilon=1.0, details={})
    with pytest.raises(LedgerError, match="unit"):
        ledger.append(unit="device", artefact_sha256=sha("x"), signer=key, **common)
    with pytest.raises(LedgerError, match="64 hex"):
        ledger.append(unit="record", artefact_sha256="abc", signer=key, **common)
    with pytest.raises(LedgerError, match="not this device's key"):
        ledger.append(unit="record", artefact_sha256=sha("x"), signer=Ed25519PrivateKey.generate(), **common)
    assert ledger.records() == [] and ledger.verify() == []


def test_infinite_epsilon_round_trips_and_verifies(tmp_path: Path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key)
    gate.commit_non_private("p", "record", sha("baseline"), details={"why": "comparison"})
    rec = Ledger(db).records()[0]
    assert math.isinf(rec.epsilon) and rec.mechanism == "non-private" and rec.release() is None
    assert Ledger(db).verify() == []
    assert Ledger(db).check() == 1


def test_real_vault_ledger_verifies_without_passphrase(tmp_path: Path):
    """The vault's own device key signs; `audit verify` needs only the file."""
    from personal.vault import Vault, VaultConfig

    path = tmp_path / "vault.db"
    with Vault.create(path, "a long test passphrase", VaultConfig(fast_kdf=True)) as v:
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        fill(gate, 3)
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 0, out.stderr
    assert "3 records" in out.stdout
    sql(path, "update ledger set profile = 'mallory' where seq = 1")
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 1 and "record seq 1 (profile 'mallory'" in out.stdout
