"""Budget policy and the release gate: acceptance 3 (a release over the cap is refused, nothing
changes, the remaining budget is printed), units kept apart, rolling windows, non-private runs."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import DEFAULT_POLICY, BudgetError, BudgetExhausted, BudgetPolicy, ReleaseGate
from privacy.ledger import Ledger

from .priv_helpers import CSPRNG, cli, sha, signed_db

PASS = "a long test passphrase"
SMALL = SubsampledGaussian(2.0, 0.1, 50)  # epsilon ~1.65 at delta 1e-5; twice: ~2.34 (cheap for PLD)


def snapshot(path: Path) -> tuple[str, str]:
    """SHA-256 of the main file's bytes and of a logical dump of every table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dump = "\n".join(conn.iterdump())
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), hashlib.sha256(dump.encode()).hexdigest()


@pytest.fixture
def gate(tmp_path: Path) -> ReleaseGate:
    db, key = signed_db(tmp_path / "d.db")
    return ReleaseGate(db, signer=key)


def test_refused_release_writes_nothing_and_carries_what_remains(gate: ReleaseGate):
    gate.set_policy("alice", "record", BudgetPolicy(epsilon_cap=2.0, delta=1e-5))
    rec = gate.commit("alice", "record", SMALL, sha("adapter 1"), details=CSPRNG)
    assert rec.epsilon == pytest.approx(compute_epsilon([SMALL], 1e-5), rel=1e-9)
    before = list(gate.db.conn.iterdump())
    with pytest.raises(BudgetExhausted) as info:
        gate.check("alice", "record", SMALL)
    err = info.value
    assert err.spent == pytest.approx(rec.epsilon) and err.cap == 2.0
    assert err.remaining == pytest.approx(2.0 - rec.epsilon)
    assert err.epsilon_after > 2.0 and err.requested == pytest.approx(rec.epsilon)
    assert f"{err.remaining:.4g} remains" in str(err)
    with pytest.raises(BudgetExhausted):
        gate.commit("alice", "record", SMALL, sha("adapter 2"), details=CSPRNG)  # commit re-checks too
    assert list(gate.db.conn.iterdump()) == before
    assert len(Ledger(gate.db).records()) == 1


def test_units_are_accounted_separately(gate: ReleaseGate):
    gate.set_policy("alice", "record", BudgetPolicy(2.0, 1e-5))
    gate.commit("alice", "record", SMALL, sha("a"), details=CSPRNG)
    assert gate.spent("alice", "user") == 0.0
    assert gate.policy("alice", "user") == DEFAULT_POLICY
    gate.commit("alice", "user", SMALL, sha("b"), details=CSPRNG)  # the user-level budget is untouched by record-level spend
    assert gate.spent("alice", "user") == pytest.approx(gate.spent("alice", "record"))
    assert gate.spent("bob", "record") == 0.0 and gate.remaining("bob", "record") == DEFAULT_POLICY.epsilon_cap


def test_epsilon_after_composes_heterogeneous_releases(gate: ReleaseGate):
    other = SubsampledGaussian(2.0, 0.1, 100)
    gate.commit("p", "record", SMALL, sha("1"), details=CSPRNG)
    rec = gate.commit("p", "record", other, sha("2"), details=CSPRNG)
    assert rec.epsilon == pytest.approx(compute_epsilon([SMALL, other], 1e-5), rel=1e-9)
    assert gate.spent("p", "record") == pytest.approx(rec.epsilon, rel=1e-9)


def test_rolling_window_cap(tmp_path: Path):
    db, key = signed_db(tmp_path / "w.db")
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    gate = ReleaseGate(db, signer=key, clock=lambda: now[0])
    gate.set_policy("p", "record", BudgetPolicy(epsilon_cap=10.0, delta=1e-5, window_days=7, window_cap=2.0))
    gate.commit("p", "record", SMALL, sha("1"), details=CSPRNG)
    with pytest.raises(BudgetExhausted, match="in the last 7 days") as info:
        gate.check("p", "record", SMALL)
    assert info.value.window_days == 7 and info.value.cap == 2.0
    now[0] += timedelta(days=8)  # the first release has left the window; the total cap still counts it
    after = gate.check("p", "record", SMALL)
    assert after == pytest.approx(compute_epsilon([SMALL, SMALL], 1e-5))


def test_non_private_release_is_recorded_as_infinite_and_blocks_later_releases(gate: ReleaseGate):
    rec = gate.commit_non_private("p", "record", sha("baseline"), details={"purpose": "comparison"})
    assert math.isinf(rec.epsilon)
    assert math.isinf(gate.spent("p", "record")) and gate.remaining("p", "record") == 0.0
    with pytest.raises(BudgetExhausted):
        gate.check("p", "record", SMALL)
    with pytest.raises(BudgetError, match="commit_non_private"):
        gate.commit("q", "record", SMALL, sha("x"), mechanism="non-private", details=CSPRNG)


def test_noiseless_mechanism_is_refused_by_check(gate: ReleaseGate):
    with pytest.raises(BudgetExhausted):
        gate.check("p", "record", SubsampledGaussian(0.0, 0.01, 10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon_cap=0, delta=1e-5), "epsilon cap"),
        (dict(epsilon_cap=math.inf, delta=1e-5), "epsilon cap"),
        (dict(epsilon_cap=1, delta=1.5), "delta"),
        (dict(epsilon_cap=1, delta=1e-5, window_days=7), "go together"),
        (dict(epsilon_cap=1, delta=1e-5, window_days=-1, window_cap=1), "window"),
    ],
)
def test_bad_policies(kwargs, match):
    with pytest.raises(BudgetError, match=match):
        BudgetPolicy(**kwargs)


def test_bad_targets(gate: ReleaseGate):
    with pytest.raises(BudgetError, match="unit"):
        gate.check("p", "device", SMALL)
    with pytest.raises(BudgetError, match="profile"):
        gate.spent("", "record")


def test_acceptance3_cli_refuses_and_leaves_the_vault_unchanged(tmp_path: Path):
    """Real vault: cap set through the CLI, a release recorded, then an over-cap request is refused."""
    from personal.vault import Vault, VaultConfig

    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        ReleaseGate(v.db, signer=v.signing_key()).commit("ann", "record", SMALL, sha("adapter"), details=CSPRNG)
    out = cli("privacy", "budget", "--vault", str(path), "--profile", "ann", "--unit", "record", "--set-cap", "2",
              "--json", env_pass=PASS)  # a policy change is a signed entry: it needs the passphrase
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["budgets"][0]
    assert row["cap"] == 2.0 and 0.3 < row["remaining"] < 0.4
    before = snapshot(path)
    out = cli("privacy", "check", "--vault", str(path), "--profile", "ann", "--noise-multiplier", "2",
              "--sample-rate", "0.1", "--steps", "50", env_pass=PASS)  # a profile *name* needs the passphrase
    assert out.returncode == 1
    assert "privacy budget exhausted" in out.stderr and f"{row['remaining']:.4g} remains" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") <= 1
    assert snapshot(path) == before
    fits = cli("privacy", "check", "--vault", str(path), "--profile", row["profile_id"], "--noise-multiplier", "4",
               "--sample-rate", "0.1", "--steps", "10")  # by id: no passphrase
    assert fits.returncode == 0 and "fits" in fits.stdout
    assert snapshot(path) == before


def test_acceptance3_training_request_over_the_cap_is_refused_before_any_work(tmp_path: Path):
    """`homebody personalize` (personal/) goes through the gate: refused, vault unchanged, remaining printed."""
    from personal.vault import Event, Vault, VaultConfig

    path = tmp_path / "vault.db"
    start = datetime(2024, 5, 1, 7, tzinfo=timezone.utc)
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events([Event("ann", start + timedelta(hours=i), f"e{i % 3}") for i in range(40)])
        ReleaseGate(v.db, signer=v.signing_key()).set_policy("ann", "record", BudgetPolicy(0.5, 1e-5))
    before = snapshot(path)
    out = cli("personalize", "--vault", str(path), "--profile", "ann", "--model", "tiny", "--epsilon", "3",
              env_pass=PASS)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "privacy budget exhausted" in out.stderr and "0.5 remains" in out.stderr
    assert snapshot(path) == before


def test_status_reports_each_unit_from_the_ledger(gate: ReleaseGate, tmp_path: Path):
    """`gate.status(profile)`: the one budget table (the CLI's `privacy budget` and the SDK's `budget()` read it)."""
    from privacy.budget import BudgetStatus

    gate.set_policy("alice", "record", BudgetPolicy(4.0, 1e-6, window_days=7.0, window_cap=3.0))
    gate.commit("alice", "record", SMALL, sha("a"), details=CSPRNG)
    gate.commit("alice", "record", SMALL, sha("b"), details=CSPRNG)
    gate.commit_non_private("alice", "user", sha("c"))
    record, user = gate.status("alice")
    assert isinstance(record, BudgetStatus) and (record.unit, user.unit) == ("record", "user")
    spent = compute_epsilon([SMALL, SMALL], 1e-6)  # at the policy's delta, not the default's
    assert record.spent == pytest.approx(spent, rel=1e-9) == pytest.approx(gate.spent("alice", "record"), rel=1e-9)
    assert (record.cap, record.delta, record.releases) == (4.0, 1e-6, 2)
    assert record.remaining == pytest.approx(4.0 - spent) and not record.unbounded
    assert (record.window_days, record.window_cap) == (7.0, 3.0)
    assert user.unbounded and user.remaining == 0.0 and user.releases == 1
    assert (user.cap, user.delta, user.window_days) == (DEFAULT_POLICY.epsilon_cap, DEFAULT_POLICY.delta, None)
    nobody = gate.status("bob")  # no record: the default policy, nothing spent
    assert [(s.spent, s.remaining, s.releases) for s in nobody] == [(0.0, DEFAULT_POLICY.epsilon_cap, 0)] * 2
    with pytest.raises(BudgetError):
        gate.status("")
