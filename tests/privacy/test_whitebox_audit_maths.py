"""White-box audit maths (privacy/whitebox.py) against closed forms and directly simulated mechanisms."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from privacy.accountant import SubsampledGaussian, compute_epsilon, noise_for_epsilon
from privacy.empirical import AuditInputError
from privacy.whitebox import (CanaryScores, gaussian_shape_estimate, gdp_delta, gdp_epsilon, gdp_mu,
                              whitebox_audit, whitebox_candidates)


def test_gdp_delta_matches_the_closed_form_and_inverts():
    phi = NormalDist().cdf
    for mu, eps in [(0.5, 0.3), (1.0, 1.0), (2.0, 4.0), (3.0, 2.5)]:
        closed = phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)
        assert gdp_delta(mu, eps) == pytest.approx(closed, rel=1e-9, abs=1e-15)
    for eps in (0.5, 1.0, 4.0, 8.0, 30.0):
        mu = gdp_mu(eps, 1e-5)
        assert gdp_epsilon(mu, 1e-5) == pytest.approx(eps, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(math.inf, 1e-5) == math.inf
    assert math.isfinite(gdp_epsilon(60.0, 1e-5))  # no underflow in the far tail


def test_composed_gaussian_is_exactly_gdp_as_the_accountant_says():
    # T full-batch Gaussian steps with noise z compose to sqrt(T)/z-GDP exactly; the PLD accountant agrees.
    for z, steps in [(2.0, 10), (7.65, 50), (1.0, 4)]:
        pld = compute_epsilon([SubsampledGaussian(z, 1.0, steps)], 1e-5)
        assert gdp_epsilon(math.sqrt(steps) / z, 1e-5) == pytest.approx(pld, rel=2e-3)


def test_gaussian_shape_estimate_recovers_a_simulated_mu():
    rng = np.random.default_rng(1)
    for mu in (0.3, 0.9, 1.7):
        inc = rng.random(20000) < 0.5
        scores = rng.normal(0, 3.0, inc.size) + 7.0 + 3.0 * mu * inc  # any location and scale
        est = gaussian_shape_estimate(scores, inc, 1e-5)
        assert est.mu == pytest.approx(mu, abs=0.05)
        assert est.mu_lower < est.mu and est.epsilon_lower < est.epsilon
        assert est.epsilon == pytest.approx(gdp_epsilon(est.mu, 1e-5))


def test_gaussian_lower_limit_has_its_confidence():
    rng = np.random.default_rng(2)
    mu, covered = 1.0, 0
    for _ in range(300):
        inc = rng.random(2000) < 0.5
        est = gaussian_shape_estimate(rng.normal(0, 1, inc.size) + mu * inc, inc, 1e-5, confidence=0.95)
        covered += est.mu_lower <= mu
    assert 0.91 <= covered / 300 <= 0.99


def _dp_sgd_scores(eps: float, q: float, steps: int, m: int, seed: int, noise_scale: float = 1.0):
    """The white-box scores of Dirac canaries under DP-SGD, simulated directly: Binomial + Gaussian."""
    z = noise_for_epsilon(eps, q, steps, 1e-5)
    rng = np.random.default_rng(seed)
    inc = rng.random(m) < 0.5
    s = rng.binomial(steps, q, m) * inc + rng.normal(0, z * noise_scale * math.sqrt(steps), m)
    return s, inc


def test_correct_dp_sgd_passes_and_halved_noise_is_flagged():
    for seed in range(3):
        s, inc = _dp_sgd_scores(4.0, 0.5, 100, 10000, seed)
        ok = whitebox_audit(s, inc, 1e-5, claimed_epsilon=4.0)
        assert not ok.flagged and 1.5 < ok.snj.epsilon_lower < 4.0 and 3.0 < ok.gaussian.epsilon < 4.4
        s, inc = _dp_sgd_scores(4.0, 0.5, 100, 10000, seed, noise_scale=0.5)
        bad = whitebox_audit(s, inc, 1e-5, claimed_epsilon=4.0)
        assert bad.flagged and bad.gaussian_fails and bad.gaussian.epsilon_lower > 6


def test_noise_off_is_flagged_by_both_readings():
    rng = np.random.default_rng(3)
    inc = rng.random(4000) < 0.5
    s = rng.binomial(100, 0.5, inc.size) * inc  # no noise: out canaries score exactly 0
    res = whitebox_audit(s, inc, 1e-5, claimed_epsilon=1.0)
    assert res.snj_fails and res.gaussian_fails and res.gaussian.epsilon_lower > 1.0
    d = res.to_dict()
    assert d["flagged"] and d["snj"]["epsilon_lower"] > 1.0


def test_candidates_and_bad_input():
    assert whitebox_candidates(10000) == [(100, 100), (200, 200), (500, 500)]
    assert whitebox_candidates(10) == [(1, 1)]
    with pytest.raises(AuditInputError):
        gaussian_shape_estimate([1.0, 2.0, 3.0], [True, False, False], 1e-5)
    with pytest.raises(AuditInputError):
        gaussian_shape_estimate([1.0, float("nan"), 3.0, 4.0], [True, True, False, False], 1e-5)
    with pytest.raises(AuditInputError):
        gdp_epsilon(1.0, 0.0)
    with pytest.raises(AuditInputError):
        CanaryScores(3)
    sc = CanaryScores(5)
    with pytest.raises(AuditInputError):
        sc.observe(np.zeros(4))
    sc.observe(np.ones(5))
    assert sc.steps == 1 and sc.total.sum() == 5


def test_few_canaries_widen_the_lower_limit():
    # 8 in-scores against 1,000 out-scores: the Student-t quantile (7 degrees of freedom), not the normal one.
    rng = np.random.default_rng(4)
    inc = np.arange(1008) < 8
    scores = rng.normal(0, 1, inc.size) + 1.0 * inc
    est = gaussian_shape_estimate(scores, inc, 1e-5, confidence=0.95)
    se = math.sqrt(1 / 8 + 1 / 1000 + est.mu**2 / (2 * 1006))
    assert est.mu - est.mu_lower == pytest.approx(1.894579 * se, rel=1e-4)
