"""One-run audit maths (Steinke, Nasr & Jagielski 2023) and a small real opacus run (acceptance 4 logic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privacy.empirical import AuditInputError, audit_from_scores, epsilon_lower_bound, p_value


def test_perfect_guesses_without_delta_match_the_closed_form():
    """delta = 0, r of r right: the bound solves q^r = 1 - confidence with q = e^eps / (1 + e^eps)."""
    for r in (10, 100, 500):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0, 0.95) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)


def test_bound_behaves_monotonically():
    base = epsilon_lower_bound(1000, 200, 180, 1e-5)
    assert epsilon_lower_bound(1000, 200, 190, 1e-5) > base  # more right guesses
    assert epsilon_lower_bound(1000, 200, 180, 1e-5, 0.99) < base  # more confidence
    assert epsilon_lower_bound(1000, 200, 180, 1e-2) < base  # a larger delta explains more
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # chance level proves nothing
    assert p_value(1000, 200, 180, 2.0, 1e-5) >= p_value(1000, 200, 180, 2.0, 0.0)


def test_randomized_response_at_known_epsilon_is_not_overstated():
    """Guesses from an eps-DP randomized response: the 95% bound rarely exceeds eps (expected < 1 in 20)."""
    rng = np.random.default_rng(7)
    eps, m, over = 1.0, 1000, 0
    p_right = math.exp(eps) / (1 + math.exp(eps))
    for _ in range(20):
        inc = rng.random(m) < 0.5
        right = rng.random(m) < p_right
        scores = np.where(right == inc, 1.0, -1.0) + rng.normal(0, 1e-3, m)
        over += audit_from_scores(scores, inc, 1e-5, 0.95).epsilon_lower > eps
    assert over <= 3


def test_bad_audit_input():
    with pytest.raises(AuditInputError):
        epsilon_lower_bound(10, 20, 5)
    with pytest.raises(AuditInputError):
        audit_from_scores([0.1, float("nan")], [True, False])
    with pytest.raises(AuditInputError):
        audit_from_scores([0.1, 0.2], [True])


def test_small_real_training_no_noise_fails_the_claim_and_dp_does_not(tmp_path):
    """The same opacus training, noise off vs calibrated to epsilon 1 (200 canaries, a few seconds each)."""
    from simulations.empirical_audit import EmpiricalAuditConfig, run_empirical_audit

    small = dict(canaries=200, examples=200, epochs=10, batch_size=50, delta=1e-5)
    bug = run_empirical_audit(EmpiricalAuditConfig(epsilon=1.0, noise=False, **small))
    assert bug.noise_multiplier == 0.0 and bug.accountant_epsilon is None
    assert bug.epsilon_lower > 1.5 and bug.claim_fails and "CLAIM FAILS" in bug.verdict()
    assert bug.member_loss < bug.nonmember_loss
    dp = run_empirical_audit(EmpiricalAuditConfig(epsilon=1.0, **small))
    assert dp.noise_multiplier > 1.0 and dp.accountant_epsilon == pytest.approx(1.0, abs=0.01)
    assert dp.epsilon_lower <= 1.0 and not dp.claim_fails


def test_cli_empirical_writes_json(tmp_path):
    from typer.testing import CliRunner

    from simulations.cli import app

    out = tmp_path / "a.json"
    res = CliRunner().invoke(app, ["audit", "empirical", "--no-noise", "--canaries", "100", "--examples", "100",
                                   "--epochs", "8", "--batch-size", "50", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "empirical lower bound" in res.output and "no DP claim" in res.output
    data = json.loads(out.read_text())
    assert data["epsilon_lower"] > 1.0 and data["claimed_epsilon"] is None
