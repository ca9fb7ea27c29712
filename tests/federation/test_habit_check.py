"""The federation's usefulness check (federation.habit_check): what a device sends, what its ledger
shows, and the server's verdict on populations where the shared scorer loses to counting and where
it wins. Real ReleaseGates (SQLite ledgers, signed), real noise, the real accountant."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.device import DeviceRound
from federation.habit_round import scorer_noise
from federation.habit_check import CHECK_CLIP, THRESHOLD_STD, CheckRun, check_config, check_noise, check_round, run_check
from personal.evaluate import chronological_split
from personal.habit_predictor import tail_gain
from personal.habits import ScorerShape, initial_weights
from personal.vault import Event
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import BudgetPolicy, ReleaseGate

LABELS = ("coffee", "gym", "read", "walk")


def markov_owner(user: str, weeks: int = 36) -> list[Event]:
    """coffee -> gym -> read x 4, weekly at one hour: the Markov counts beat the initial shared weights
    (which rank like most frequent) on the last 20% of the training events by 1/6 (hand-computed in
    tests/simulations/test_sim_predictors.py)."""
    cycle = ["coffee", "gym", "read", "read", "read", "read"]
    return [Event(user, datetime(2024, 3, 4, 9) + timedelta(days=7 * i), cycle[i % 6]) for i in range(weeks)]


def gate_for(folder: Path, user: str, cap: float | None = None) -> ReleaseGate:
    gate = ReleaseGate(sqlite_utils.Database(folder / f"{user}.db"), signer=Ed25519PrivateKey.generate(), accountant="rdp",
                       allow_seeded_noise=True)
    if cap is not None:
        gate.set_policy(user, "user", BudgetPolicy(epsilon_cap=cap, delta=1e-5))
    return gate


def test_a_device_sends_one_clipped_noised_gain_and_its_ledger_records_it(tmp_path):
    train, _ = chronological_split(markov_owner("u"), 0.2)
    weights = initial_weights(ScorerShape(LABELS))
    gain = tail_gain(train, LABELS, weights)
    assert gain == pytest.approx(-1 / 6)
    config = check_config(noise_multiplier=2.0, devices=1, delta=1e-5, mode="device")
    seen = {}
    gate = gate_for(tmp_path, "u", cap=10.0)
    dev = DeviceRound("u", 1, gate=gate, profile="u", rng=np.random.default_rng(7), run="r-check",
                      observe=lambda stage, arrays: seen.update({stage: arrays}))
    res = check_round(train, LABELS, weights, config, dev)
    # on the wire: one number named "gain" and the public header; no event name, no count
    assert set(res.wire.arrays) == {"gain"} and res.wire.arrays["gain"].shape == (1,)
    assert set(res.wire.header) <= {"round", "device_id", "clip_norm", "sigma", "encoding"}
    assert not any(name in str(res.wire.header) for name in LABELS)
    assert seen["clipped"]["gain"][0] == pytest.approx(max(gain, -CHECK_CLIP))  # clipped to the check's bound
    noise = float(res.wire.arrays["gain"][0]) - max(gain, -CHECK_CLIP)
    assert noise != 0.0 and abs(noise) < 6 * 2.0 * CHECK_CLIP
    [record] = gate.ledger.records("u", "user")
    assert record.details["model"] == "habit-scorer-check" and record.details["run"] == "r-check"
    assert record.release() == SubsampledGaussian(2.0, 1.0, 1)
    assert gate.spent("u", "user") == pytest.approx(compute_epsilon([SubsampledGaussian(2.0, 1.0, 1)], 1e-5, "rdp"))
    assert gate.ledger.verify(gate.signer.public_key()) == []


def test_a_gain_beyond_the_bound_is_clipped_to_it():
    """Whatever a device computes, its report moves the sum by at most CHECK_CLIP (the sensitivity
    the check's noise is calibrated for)."""
    from federation.habit_round import release

    config = check_config(noise_multiplier=0.0, devices=1, delta=1e-5)
    sent = [float(release({"gain": np.array([g], np.float32)}, {"gain": (1,)}, config, DeviceRound("u", 1),
                          "habit-scorer-check", 1).update.arrays["gain"][0]) for g in (1.0, -1.0, 0.05)]
    assert sent == [pytest.approx(CHECK_CLIP), pytest.approx(-CHECK_CLIP), pytest.approx(0.05)]


def test_where_counting_wins_the_population_does_not_keep_the_scorer_and_ledgers_add_up(tmp_path):
    """30 owners whose own Markov counts beat the shared weights by 1/6 on their tails: not kept,
    noised or not; each ledger shows the scorer's prior plus exactly one check release, within the cap."""
    trains = {f"u{i}": chronological_split(markov_owner(f"u{i}"), 0.2)[0] for i in range(30)}
    weights = initial_weights(ScorerShape(LABELS))
    exact, _ = run_check(trains, LABELS, weights, check_config(0.0, 30, 1e-5), CheckRun(noise_seed=1),
                         np.random.default_rng(0))
    assert exact.noised_sum == pytest.approx(30 * max(-1 / 6, -CHECK_CLIP), abs=1e-5)
    assert exact.threshold == 0.0 and not exact.kept
    prior = (SubsampledGaussian(scorer_noise(0.9, 15, 30, 20, 1e-5), 0.5, 20),)  # 90% of epsilon 1, as scorer_plan splits it
    sigma = check_noise(1.0, 1e-5, prior)
    gates = {u: gate_for(tmp_path, u, cap=1.0) for u in trains}
    for u, gate in gates.items():  # the scorer's releases, as run_scorer_federation leaves them
        gate.commit(u, "user", prior[0], artefact_sha256="0" * 64, mechanism="dp-fedavg-secagg-share",
                    details={"rng": "seeded"})
    result, spent = run_check(trains, LABELS, weights, check_config(sigma, 30, 1e-5), CheckRun(noise_seed=2),
                              np.random.default_rng(0), gates)
    assert result.devices == 30 and not result.kept
    assert result.threshold == pytest.approx(THRESHOLD_STD * sigma * CHECK_CLIP)
    both = compute_epsilon(prior + (SubsampledGaussian(sigma, 1.0, 1),), 1e-5, "rdp")
    assert both <= 1.0
    for u, gate in gates.items():
        assert spent[u] == pytest.approx(both, rel=1e-9)
        assert [r.details.get("model") for r in gate.ledger.records(u, "user")] == [None, "habit-scorer-check"]


def test_where_the_scorer_wins_a_large_enough_population_keeps_it_and_a_small_one_falls_back():
    """Planted weekly routines (simulations' synthetic owners), the scorer learnt non-privately over
    them: its tail gains sum to more than the threshold with noise for user-level epsilon 8 on 48
    devices, and to less on 4 (too few to tell: every device then uses its own counts)."""
    from simulations.devices import prepare_devices
    from simulations.habit_sim import scorer_plan, train_scorer
    from simulations.populations import load_population, select_devices
    from simulations.runner import SimulationConfig

    cfg = SimulationConfig(dataset="synthetic", synthetic_devices=48, devices=48, model="tiny", max_events=100,
                           scorer_rounds=20, scorer_cohort=48, seed=0, predictor="habit", non_private=True)
    pop = select_devices(load_population("synthetic", synthetic_devices=48, seed=0), 48)
    devices = prepare_devices(pop, Path(tempfile.mkdtemp()) / "v", max_events=100)
    weights = train_scorer(cfg, scorer_plan(cfg, 48, "pos"), devices, pop.labels()).weights
    trains = {d.user: d.habit_train for d in devices}
    sigma = check_noise(8.0, 1e-5, (SubsampledGaussian(scorer_noise(7.2, 48, 48, 20, 1e-5), 1.0, 20),))
    big, _ = run_check(trains, pop.labels(), weights, check_config(sigma, 48, 1e-5), CheckRun(noise_seed=3),
                       np.random.default_rng(0))
    assert big.kept and big.noised_sum > big.threshold
    few = dict(list(trains.items())[:4])
    small, _ = run_check(few, pop.labels(), weights, check_config(sigma, 4, 1e-5), CheckRun(noise_seed=3),
                         np.random.default_rng(0))
    assert small.devices == 4 and not small.kept  # 4 x CHECK_CLIP is below 3 noise standard deviations
    assert 4 * CHECK_CLIP < small.threshold
