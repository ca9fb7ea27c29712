"""The habit scorer's DP-FedAvg round: what a device sends, what its ledger shows, and that it learns."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import numpy as np
import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.config import FederationConfig
from federation.device import DeviceDeclined, DeviceRound
from federation.habit_round import ScorerRun, run_scorer_federation, scorer_noise, train_scorer_round
from federation.update import UpdateHeader
from personal.evaluate import chronological_split
from personal.habits import FEATURES, ScorerShape, initial_weights, query_batch, topk_hits, training_batch
from personal.vault import Event
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.budget import BudgetPolicy, ReleaseGate

VOCAB = ("bar", "coffee", "gym", "lunch", "museum", "office")
MON = datetime(2026, 3, 2)


def owner_events(user: str, shift: int, days: int = 12) -> list[Event]:
    """A clockwork owner: gym at 07:00+shift, coffee at 08:00, office at 09:00, lunch at 12:00,
    a coffee 3 times a day in between (so "most frequent" says coffee at every hour)."""
    out = []
    for d in range(days):
        day = MON + timedelta(days=d)
        for hour, name in ((7, "gym"), (8, "coffee"), (9, "office"), (10, "coffee"), (12, "lunch"), (15, "coffee")):
            out.append(Event(user, day.replace(hour=(hour + shift) % 24), name))
    return out


def gate_for(tmp_path, user: str, cap: float | None = None) -> ReleaseGate:
    gate = ReleaseGate(sqlite_utils.Database(tmp_path / f"{user}.db"), signer=Ed25519PrivateKey.generate(), accountant="rdp",
                      allow_seeded_noise=True)
    if cap is not None:
        gate.set_policy(user, "user", BudgetPolicy(epsilon_cap=cap, delta=1e-5))
    return gate


def batches(n: int):
    shape = ScorerShape(VOCAB)
    out, queries = {}, {}
    for i in range(n):
        train, qs = chronological_split(owner_events(f"d{i}", i % 3), 0.2)
        out[f"d{i}"], queries[f"d{i}"] = training_batch(train, shape), query_batch(train, qs, shape)
    return shape, out, queries


def test_ledgers_show_exactly_the_stated_guarantee(tmp_path):
    shape, train, _ = batches(6)
    target, rounds, cohort = 2.0, 4, 3
    sigma = scorer_noise(target, cohort, 6, rounds, 1e-5)
    config = FederationConfig(rounds=rounds, mode="secagg", clip_norm=0.5, noise_multiplier=sigma, secagg_min_devices=cohort)
    gates = {u: gate_for(tmp_path, u, cap=target) for u in train}
    run = ScorerRun(rounds=rounds, cohort=cohort, noise_seed=1)
    _, spent = run_scorer_federation(initial_weights(shape), train, config, run, np.random.default_rng(0), gates)
    guarantee = compute_epsilon([SubsampledGaussian(sigma, cohort / 6, rounds)], 1e-5, "rdp")
    assert guarantee <= target
    assert set(spent) == set(train)
    for user, gate in gates.items():
        assert spent[user] == pytest.approx(guarantee, rel=1e-9)
        assert gate.spent(user, "user") == pytest.approx(guarantee, rel=1e-9)
        records = gate.ledger.records(user, "user")
        assert sum(r.release().steps for r in records) == rounds  # every round charged, sampled or not
        assert {r.mechanism for r in records} == {"dp-fedavg-secagg-share"}
        assert gate.ledger.verify(gate.signer.public_key()) == []  # signed, hash-chained, intact


def test_a_device_sends_only_the_clipped_noised_change_of_the_shared_weights(tmp_path):
    shape, train, _ = batches(1)
    config = FederationConfig(mode="secagg", clip_norm=0.1, noise_multiplier=1.2, secagg_min_devices=4, local_epochs=3,
                              local_lr=1.0)
    seen = {}
    gate = gate_for(tmp_path, "d0", cap=50.0)
    device = DeviceRound("d0", 1, sample_rate=0.5, gate=gate, profile="d0", rng=np.random.default_rng(7),
                         observe=lambda stage, arrays: seen.setdefault(stage, arrays))
    weights = initial_weights(shape)
    res = train_scorer_round(weights, train["d0"], config, device)
    # names and shapes of the shared weights only: the payload does not depend on the owner's events
    assert {k: v.shape for k, v in res.wire.arrays.items()} == {"w": (len(FEATURES),), "b": (len(VOCAB),)}
    assert set(res.wire.header) == {f.name for f in dataclasses.fields(UpdateHeader)}
    assert res.wire.scales == {}
    # clipped to C before the noise, then noised on the device with sigma*C/sqrt(K)
    clipped = seen["clipped"]
    assert np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in clipped.values())) <= 0.1 * (1 + 1e-6)
    noise = np.concatenate([res.wire.arrays[k] - clipped[k] for k in ("w", "b")])
    assert np.all(noise != 0.0)
    assert res.norm_before_clip > 0.1  # the raw change was larger than C: clipping mattered, and stays local
    # nothing of the statistics: no sent value equals a feature or count of the device
    feats = np.unique(np.concatenate([train["d0"].x.ravel(), train["d0"].u.ravel()]))
    sent = np.concatenate([res.wire.arrays["w"], res.wire.arrays["b"]])
    assert not np.isin(sent, feats).any()
    # the ledger names exactly what was sent
    (record,) = gate.ledger.records("d0", "user")
    assert record.artefact_sha256 == res.wire.sha256()
    assert record.details["rng"] == "seeded" and record.details["model"] == "habit-scorer"  # says what noise it used
    assert record.epsilon == pytest.approx(compute_epsilon([SubsampledGaussian(1.2, 0.5, 1)], 1e-5, "rdp"))


def test_a_device_whose_budget_is_spent_declines_and_writes_nothing(tmp_path):
    shape, train, _ = batches(1)
    config = FederationConfig(mode="device", clip_norm=1.0, noise_multiplier=0.3)
    gate = gate_for(tmp_path, "d0", cap=0.5)
    device = DeviceRound("d0", 1, gate=gate, profile="d0", rng=np.random.default_rng(0))
    with pytest.raises(DeviceDeclined):
        train_scorer_round(initial_weights(shape), train["d0"], config, device)
    assert gate.ledger.records("d0", "user") == []


def test_federated_scorer_beats_its_counting_start_non_private_and_at_user_level_dp(tmp_path):
    shape, train, queries = batches(12)
    w0 = initial_weights(shape)
    start = np.mean([topk_hits(w0, b)["top1"] for b in queries.values()])
    out = {}
    for eps in (None, 8.0):
        sigma = scorer_noise(eps, 6, 12, 30, 1e-5) if eps else 0.0
        config = FederationConfig(rounds=30, mode="secagg", clip_norm=1.0, noise_multiplier=sigma, secagg_min_devices=6,
                                  local_lr=1.0)
        folder = tmp_path / f"eps-{eps}"
        folder.mkdir()
        gates = {u: gate_for(folder, u, cap=eps) for u in train} if eps else None
        run = ScorerRun(rounds=30, cohort=6, server_lr=0.1, noise_seed=3)
        w, _ = run_scorer_federation(w0, train, config, run, np.random.default_rng(1), gates)
        out[eps] = np.mean([topk_hits(w, b)["top1"] for b in queries.values()])
    assert start < 0.6  # "most frequent" says coffee
    assert out[None] > start + 0.2 and out[8.0] > start + 0.2
