"""Issue 13, finding 2: budgets against someone who holds the vault file (no passphrase).

Every attack edits the real vault file with the sqlite3 module, as the attacker would; the
defended behaviour is checked through the gate, `homebody audit verify` and `vault verify`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from personal.vault import Event, Vault, VaultConfig
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import BudgetExhausted, BudgetPolicy, ReleaseGate
from privacy.errors import HomebodyError
from privacy.ledger import Ledger, LedgerTampered

from .priv_helpers import cli, sha

PASS = "a long test passphrase"
MECH = SubsampledGaussian(1.0, 0.05, 200)
RNG = {"rng": "os-csprng"}  # a real device draws its noise from the OS CSPRNG (privacy.randomness)
EPS_ONE = compute_epsilon([MECH], 1e-5, "rdp")
CAP = EPS_ONE * 1.2  # admits one release of MECH, not two


def attack(path: Path, *statements: str) -> None:
    """Run SQL on the file with plain sqlite3; a statement whose table or column is absent is skipped."""
    conn = sqlite3.connect(path)
    for s in statements:
        try:
            with conn:
                conn.execute(s)
        except sqlite3.OperationalError:
            pass  # e.g. main's budget_policy table vs. this branch's ledger entries
    conn.close()


def vault_with_one_release(tmp_path: Path) -> Path:
    """A real vault with a signed cap for 'ann' that one release of MECH has (almost) used up."""
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events([Event("ann", datetime(2025, 3, 1, 7, i, tzinfo=timezone.utc), "coffee") for i in range(5)])
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        gate.set_policy("ann", "record", BudgetPolicy(CAP, 1e-5))
        gate.commit("ann", "record", MECH, sha("adapter 1"), details=RNG)
    return path


def release(path: Path, artefact: str = "adapter 2"):
    """The next release through the real gate, with the device key (the owner's app)."""
    with Vault.open(path, PASS) as v:
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        return gate.commit("ann", "record", MECH, sha(artefact), details=RNG)


def n_records(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select count(*) from ledger").fetchone()[0]
    finally:
        conn.close()


def test_editing_the_cap_in_the_file_does_not_let_a_release_past_it(tmp_path: Path):
    path = vault_with_one_release(tmp_path)
    before = n_records(path)
    # main keeps caps in an unsigned table; this branch keeps them in signed ledger entries
    attack(path, "update budget_policy set epsilon_cap = 1000",
           "update ledger set params = replace(params, '\"epsilon_cap\":', '\"epsilon_cap\":1000') where kind = 'policy'")
    with pytest.raises(HomebodyError) as err:
        release(path)
    assert isinstance(err.value, (BudgetExhausted, LedgerTampered))
    assert n_records(path) == before  # nothing released
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 1 and "policy entry" in out.stdout and "edited" in out.stdout


def test_setting_a_cap_from_the_cli_needs_the_passphrase(tmp_path: Path):
    path = vault_with_one_release(tmp_path)
    before = path.read_bytes()
    out = cli("privacy", "budget", "--vault", str(path), "--profile", "ann", "--unit", "record", "--set-cap", "1000")
    assert out.returncode == 1 and "passphrase" in out.stderr and "Traceback" not in out.stderr
    assert path.read_bytes() == before
    with pytest.raises(BudgetExhausted):
        release(path)
    # the owner can raise it; the change is itself a signed entry on the chain
    ok = cli("privacy", "budget", "--vault", str(path), "--profile", "ann", "--unit", "record", "--set-cap", "1000",
             env_pass=PASS)
    assert ok.returncode == 0, ok.stderr
    release(path)
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 0 and "2 policy changes" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("how", [
    ("delete from ledger", "delete from ledger_head"),
    ("drop table ledger", "drop table ledger_head", "drop table sealed_state", "drop table budget_policy"),
])
def test_wiping_the_ledger_is_detected_and_refused(tmp_path: Path, how: tuple[str, ...]):
    path = vault_with_one_release(tmp_path)
    attack(path, *how)
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 1, out.stdout
    assert "0 records" not in out.stdout and ("deleted" in out.stdout or "missing" in out.stdout)
    with pytest.raises(LedgerTampered):
        release(path)  # the gate refuses to release on a missing chain (main: the budget was reset)
    with Vault.open(path, PASS) as v:
        assert not v.verify().ok


def test_a_release_never_re_signs_the_head_over_a_broken_chain(tmp_path: Path):
    path = vault_with_one_release(tmp_path)
    with Vault.open(path, PASS) as v:  # a second, roomier profile so that the next release fits
        ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp").commit("bob", "record", MECH, sha("bob 1"), details=RNG)
    attack(path, "delete from ledger where seq = (select max(seq) from ledger)", "delete from ledger_head")
    assert cli("audit", "verify", "--vault", str(path)).returncode == 1
    with Vault.open(path, PASS) as v, pytest.raises(LedgerTampered):
        ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp").commit("bob", "record", MECH, sha("bob 2"), details=RNG)
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 1, "the evidence was erased: the head was re-signed over a broken chain"


def test_restoring_old_ledger_rows_is_caught_by_the_sealed_state(tmp_path: Path):
    """Rows + head copied back from an older copy verify with the public key; the sealed state does not match."""
    path = vault_with_one_release(tmp_path)
    old = Path(shutil.copy(path, tmp_path / "old.db"))
    with Vault.open(path, PASS) as v:
        ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp").commit("bob", "record", MECH, sha("bob 1"), details=RNG)
    attack(path, f"attach database '{old}' as old", "delete from ledger", "insert into ledger select * from old.ledger",
           "delete from ledger_head", "insert into ledger_head select * from old.ledger_head")
    assert n_records(path) == n_records(old)
    with Vault.open(path, PASS) as v:
        with pytest.raises(LedgerTampered, match="sealed state"):
            ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp").commit("bob", "record", MECH, sha("bob 2"), details=RNG)
        report = v.verify()
    assert not report.ok and any("sealed state" in str(f) for f in report.failures)


def test_a_receipt_detects_a_rollback_of_the_whole_file(tmp_path: Path):
    path = vault_with_one_release(tmp_path)
    old = Path(shutil.copy(path, tmp_path / "old.db"))
    with Vault.open(path, PASS) as v:
        ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp").commit("bob", "record", MECH, sha("bob 1"), details=RNG)
    receipt = tmp_path / "receipt.json"
    out = cli("audit", "receipt", "--vault", str(path), "--out", str(receipt))  # no passphrase needed
    assert out.returncode == 0, out.stderr
    assert cli("audit", "verify", "--vault", str(path), "--receipt", str(receipt)).returncode == 0
    shutil.copy(old, path)  # the whole file rolled back: internally consistent, budget 'refunded'
    assert cli("audit", "verify", "--vault", str(path)).returncode == 0  # undetectable without the receipt
    out = cli("audit", "verify", "--vault", str(path), "--receipt", str(receipt))
    assert out.returncode == 1 and "rolled back" in out.stdout, out.stdout + out.stderr
    forged = json.loads(receipt.read_text())
    forged["seq"] = 1
    receipt.write_text(json.dumps(forged))
    out = cli("audit", "verify", "--vault", str(path), "--receipt", str(receipt))
    assert out.returncode == 1 and "signature is invalid" in out.stdout


def test_public_key_alone_verifies_and_profile_ids_hold_no_name(tmp_path: Path):
    path = vault_with_one_release(tmp_path)
    out = cli("audit", "verify", "--vault", str(path))
    assert out.returncode == 0 and "1 releases, 1 policy changes" in out.stdout, out.stdout
    anon = cli("privacy", "budget", "--vault", str(path), "--json")
    assert anon.returncode == 0 and "ann" not in anon.stdout
    owner = cli("privacy", "budget", "--vault", str(path), "--json", "--names", env_pass=PASS)
    rows = json.loads(owner.stdout)["budgets"]
    assert {r["profile"] for r in rows} == {"ann"} and rows[0]["cap"] == pytest.approx(CAP)
    with Vault.open(path, PASS) as v:
        assert Ledger(v.db).records()[0].profile.startswith("pid-")


def test_a_chain_forged_under_another_key_does_not_fool_the_device(tmp_path: Path):
    """The attacker swaps meta's public key for their own and writes a whole new chain with a huge cap."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import sqlite_utils

    path = vault_with_one_release(tmp_path)
    receipt = tmp_path / "receipt.json"
    assert cli("audit", "receipt", "--vault", str(path), "--out", str(receipt)).returncode == 0
    mallory = Ed25519PrivateKey.generate()
    attack(path, "drop table ledger", "drop table ledger_head", "drop table sealed_state", "drop table budget_policy",
           f"update meta set value = '{mallory.public_key().public_bytes_raw().hex()}' where key = 'device_public_key'")
    db = sqlite_utils.Database(path)
    forged = ReleaseGate(db, signer=mallory, accountant="rdp")
    forged.ledger.initialise() if hasattr(forged.ledger, "initialise") else None
    forged.set_policy("ann", "record", BudgetPolicy(1000.0, 1e-5))
    db.conn.close()
    assert cli("audit", "verify", "--vault", str(path)).returncode == 0  # self-consistent under the forged key...
    out = cli("audit", "verify", "--vault", str(path), "--receipt", str(receipt))
    assert out.returncode == 1 and "another device key" in out.stdout  # ...but not against the owner's receipt
    with Vault.open(path, PASS) as v:
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant="rdp")
        with pytest.raises(HomebodyError):
            gate.check("ann", "record", MECH)  # the device verifies with its own key: nothing fits a forged chain
        assert not v.verify().ok
