"""User-level accounting under cohort sampling: a device pays for every round of a run, sampled or not.

Amplification by sampling (q = cohort / population) is only valid when the rounds a device sat
out are charged too; a device hears of a round only when it is sampled, so it charges the rounds
since its last charge when it takes part, and `settle_run` charges the rest after the run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.device import DeviceRound, last_charged_round, round_mechanism, rounds_to_charge, settle_run
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import ReleaseGate
from tests.privacy.priv_helpers import signed_db

Q, SIGMA = 0.1, 0.8


def _commit(gate: ReleaseGate, device: DeviceRound, config: FederationConfig) -> None:
    """What train_round commits for one participation (without the training)."""
    n = rounds_to_charge(device)
    gate.commit(device.profile, "user", round_mechanism(config, Q, n), hashlib.sha256(b"update").hexdigest(),
                mechanism="dp-fedavg-device-noise", details={"round": device.round, "run": device.run, "rounds_charged": n,
                                                             "rng": "os-csprng"})


def test_a_device_pays_for_the_rounds_it_sat_out(tmp_path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key, accountant="rdp")
    config = FederationConfig(noise_multiplier=SIGMA)
    ctx = lambda r, run="run-a": DeviceRound("dev", r, Q, gate, "dev", np.random.default_rng(0), run=run)  # noqa: E731

    assert rounds_to_charge(ctx(3)) == 3  # first sampled in round 3: rounds 1-3
    _commit(gate, ctx(3), config)
    assert last_charged_round(gate, "dev", "run-a") == 3
    assert rounds_to_charge(ctx(4)) == 1
    _commit(gate, ctx(4), config)
    assert rounds_to_charge(ctx(2, run="run-b")) == 2  # another run starts its own count
    # the run had 6 rounds: settle charges rounds 5 and 6, then the ledger shows all 6
    spent = settle_run(gate, "dev", "run-a", 6, config, Q, hashlib.sha256(b"final").hexdigest())
    whole_run = compute_epsilon([SubsampledGaussian(SIGMA, Q, 6)], 1e-5, accountant="rdp")
    assert spent == pytest.approx(whole_run, rel=1e-9)
    assert settle_run(gate, "dev", "run-a", 6, config, Q, hashlib.sha256(b"final").hexdigest()) == pytest.approx(spent)
    assert [r.details["rounds_charged"] for r in gate.ledger.records("dev", "user")] == [3, 1, 2]
    assert gate.ledger.check() == 3  # every charge is a signed ledger record


def test_without_a_run_each_participation_is_one_round(tmp_path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key)
    assert rounds_to_charge(DeviceRound("dev", 5, Q, gate, "dev")) == 1
    assert rounds_to_charge(DeviceRound("dev", 5, Q, None, "dev", run="r")) == 1
