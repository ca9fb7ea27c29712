"""Canary clients (federation/canary.py) in federated rounds aggregated by federation.server.aggregate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federation.canary import CanaryClients, CanaryError
from federation.config import FederationConfig
from federation.server import aggregate
from federation.update import build_update
from privacy.accountant import noise_for_epsilon

SPEC = {"lora_A": (32, 32), "head": (500,)}


def _federated_run(eps: float, mode: str, seed: int, noise_scale: float = 1.0, devices: int = 20, rounds: int = 20,
                   canaries: int = 200):
    """`rounds` rounds of DP-FedAvg over every device (q = 1) with canary clients; returns the estimate.

    Device deltas share a drift (the "task") plus their own variation; the run claims `eps` while
    `noise_scale` (test-only) scales the noise actually added.
    """
    z = noise_for_epsilon(eps, 1.0, rounds, 1e-5)
    cfg = FederationConfig(rounds=rounds, mode=mode, noise_multiplier=z * noise_scale, clip_norm=1.0,
                           secagg_min_devices=devices, min_train_devices=1, min_available_devices=1)
    rng = np.random.default_rng(seed)
    drift = {k: rng.normal(size=s) for k, s in SPEC.items()}
    global_ = {k: np.zeros(s, np.float32) for k, s in SPEC.items()}
    initial = {k: v.copy() for k, v in global_.items()}
    can = CanaryClients(SPEC, canaries, cfg.clip_norm, unobserved=1000, seed=seed)
    for r in range(1, rounds + 1):
        updates = [build_update({k: 0.02 * drift[k] + 0.02 * rng.normal(size=s) for k, s in SPEC.items()}, SPEC,
                                round=r, device_id=f"d{i}", clip_norm=1.0, sigma=cfg.device_sigma, rng=rng)[0]
                   for i in range(devices)]
        updates += can.updates(r, 1.0)
        out = aggregate(global_, updates, SPEC, cfg, r, rng)
        assert len(out.accepted) == devices + canaries  # canaries pass the server's checks like devices
        can.observe(global_, out.arrays)
        global_ = out.arrays
    return can.estimate(initial, global_, 1e-5, claimed_epsilon=eps)


@pytest.mark.parametrize("mode", ["central", "secagg"])
def test_all_iterates_estimate_is_near_the_claim_and_halved_noise_is_flagged(mode):
    ok = _federated_run(4.0, mode, seed=0)
    assert 0.5 * 4.0 <= ok.all_iterates.epsilon <= 1.1 * 4.0 and not ok.flagged
    assert math.isfinite(ok.final_model.epsilon) and ok.rounds == 20 and ok.canaries == 200
    bad = _federated_run(4.0, mode, seed=0, noise_scale=0.5)
    assert bad.flagged and bad.all_iterates.epsilon_lower > 4.0
    d = bad.to_dict()
    assert d["flagged"] and d["all_iterates"]["n_in"] == 200 and d["all_iterates"]["n_out"] == 1000


def test_canary_updates_are_clip_norm_random_directions():
    can = CanaryClients(SPEC, 50, 2.0, unobserved=10, seed=1)
    ups = can.updates(1, 0.5)
    assert 10 < len(ups) < 40 and can.participations.sum() == len(ups)
    for u in ups:
        assert u.norm() == pytest.approx(2.0, rel=1e-5) and u.header.sigma == 0.0
    cos = can.directions[:50] @ can.directions[:50].T
    assert np.abs(cos - np.eye(50)).max() < 0.2  # nearly orthogonal in 1,524 dimensions
    with pytest.raises(CanaryError):
        CanaryClients(SPEC, 1, 1.0)
    with pytest.raises(CanaryError):
        CanaryClients(SPEC, 5, 0.0)


def test_simulate_with_canary_clients_reports_the_estimate_and_without_them_nothing_changes(tmp_path, monkeypatch,
                                                                                         capsys):
    import json

    from simulations.runner import BadSimulationConfig, SimulationConfig, run_simulation
    from tests.cli_support import run_homebody

    common = dict(dataset="synthetic", synthetic_devices=3, devices=3, rounds=2, model="tiny", epsilon=4.0, seed=0,
                  predictor="combined")
    off = run_simulation(SimulationConfig(**common, out=str(tmp_path / "off")))
    off_again = run_simulation(SimulationConfig(**common, out=str(tmp_path / "off2")))
    assert "canary_audit" not in off and off["final"]["global_top1"] == off_again["final"]["global_top1"]
    code, stdout, stderr = run_homebody(monkeypatch, capsys, "simulate", "--dataset", "synthetic", "--synthetic-devices",
                                        "3", "--devices", "3", "--rounds", "2", "--model", "tiny", "--epsilon", "4",
                                        "--audit-canaries", "8", "--predictor", "combined", "--out", str(tmp_path / "on"))
    assert code == 0, stderr
    assert "canary audit (8 canary clients, 2 rounds): claimed user-level ε 4" in stdout
    est = json.loads((tmp_path / "on" / "results.json").read_text())["canary_audit"]
    assert est["claimed_epsilon"] == 4.0 and est["canaries"] == 8 and est["rounds"] == 2
    assert est["all_iterates"]["n_in"] == 8 and est["final_model"]["n_out"] == 1000
    html = (tmp_path / "on" / "privacy_report.html").read_text()
    assert 'id="canary-estimate"' in html and "8 canary clients" in html
    assert json.loads((tmp_path / "on" / "privacy_report.json").read_text())["empirical"]["canaries"] == 8
    assert 'id="canary-estimate"' not in (tmp_path / "off" / "privacy_report.html").read_text()
    with pytest.raises(BadSimulationConfig):
        SimulationConfig(**common, audit_canaries=8, mode="local").validate()
    with pytest.raises(BadSimulationConfig):
        SimulationConfig(**common, audit_canaries=1).validate()
