"""Issue 13, finding 3: concurrent releases must not exceed the cap.

Several real processes open the same vault file, wait at a barrier, then each commits a release
that fits alone but not with any other. Exactly one may land, and spent stays within the cap.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from personal.vault import Vault, VaultConfig
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import BudgetExhausted, BudgetPolicy, ReleaseGate

from .priv_helpers import sha

PASS = "race test passphrase"
ACCOUNTANT = "rdp"
MECH = SubsampledGaussian(1.0, 0.05, 200)
RNG = {"rng": "os-csprng"}  # a real device draws its noise from the OS CSPRNG (privacy.randomness)
CAP = compute_epsilon([MECH], 1e-5, ACCOUNTANT) * 1.2
PROCESSES = 5
TRIALS = 3


def _release(path: str, i: int, barrier, results) -> None:
    """One contender: open the vault, wait for the others, commit."""
    try:
        with Vault.open(path, PASS) as v:
            gate = ReleaseGate(v.db, signer=v.signing_key(), accountant=ACCOUNTANT)
            barrier.wait(timeout=60)
            try:
                gate.commit("ann", "record", MECH, sha(f"contender {i}"), details=RNG)
                results.put((i, "landed"))
            except BudgetExhausted:
                results.put((i, "refused"))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put((i, f"error: {type(exc).__name__}: {exc}"))


def _race(path: Path) -> list[str]:
    ctx = mp.get_context("fork")  # no torch in this process; the parent holds no connection to the file
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_release, args=(str(path), i, barrier, results)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120)[1] for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return outcomes


def test_precondition_one_release_fits_two_do_not():
    assert compute_epsilon([MECH], 1e-5, ACCOUNTANT) <= CAP < compute_epsilon([MECH, MECH], 1e-5, ACCOUNTANT)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_racing_processes_land_exactly_one_release(tmp_path: Path, trial: int):
    path = tmp_path / "vault.db"
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        ReleaseGate(v.db, signer=v.signing_key(), accountant=ACCOUNTANT).set_policy("ann", "record",
                                                                                    BudgetPolicy(CAP, 1e-5))
    outcomes = _race(path)
    assert not [o for o in outcomes if o.startswith("error")], outcomes
    assert outcomes.count("landed") == 1, outcomes
    with Vault.open(path, PASS) as v:
        gate = ReleaseGate(v.db, signer=v.signing_key(), accountant=ACCOUNTANT)
        assert len(gate.ledger.records("ann", "record")) == 1
        assert gate.spent("ann", "record") <= CAP
        assert gate.ledger.verify() == []
