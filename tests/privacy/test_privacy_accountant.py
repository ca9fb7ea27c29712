"""Accountants: acceptance 1 through the CLI, heterogeneous composition, the inverse searches, bad input."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from typer.testing import CliRunner

from privacy.accountant import (
    AccountingError,
    SubsampledGaussian,
    compute_epsilon,
    max_steps_for_epsilon,
    noise_for_epsilon,
)
from simulations.cli import app

from .priv_helpers import cli

runner = CliRunner()
GRID = list(itertools.product([0.5, 1, 2, 4], [0.001, 0.01, 0.1], [10, 1000, 10000]))
DELTA = 1e-5


def cli_epsilon(z: float, q: float, t: int, accountant: str) -> dict:
    res = runner.invoke(app, ["privacy", "epsilon", "--noise-multiplier", str(z), "--sample-rate", str(q),
                              "--steps", str(t), "--delta", str(DELTA), "--accountant", accountant, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["accountant"] == accountant and out["delta"] == DELTA
    return out


def reference_pld(z: float, q: float, t: int) -> float:
    """Independent dp_accounting computation: the PLD object API, not the accountant/DpEvent path.

    Its grid is dp_accounting's default 1e-4, or 2.5e-6 x epsilon (at most 1e-3) for large
    epsilons, found by a coarse first pass: at least 4x finer than the library's own grid.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld

    def eps(grid: float) -> float:
        dist = pld.from_gaussian_mechanism(standard_deviation=z, sampling_prob=q, value_discretization_interval=grid)
        return dist.self_compose(t).get_epsilon_for_delta(DELTA)

    return eps(min(1e-3, max(1e-4, 2.5e-6 * eps(1e-2))))


def test_acceptance1_cli_pld_matches_dp_accounting_and_rdp_is_never_below():
    """All 36 grid points: CLI --accountant pld within 2% of dp_accounting, and RDP >= PLD."""
    for z, q, t in GRID:
        ours = cli_epsilon(z, q, t, "pld")["epsilon"]
        ref = reference_pld(z, q, t)
        assert abs(ours - ref) <= 0.02 * ref, (z, q, t, ours, ref)
        rdp = cli_epsilon(z, q, t, "rdp")["epsilon"]
        assert rdp >= ours, (z, q, t, rdp, ours)


def test_known_value_and_prv_agree_with_pld():
    """sigma=1.1, q=0.01, 10,000 steps: PLD ~5.19, PRV within 1%, RDP ~5.63 (NOTES-stack)."""
    mech = [SubsampledGaussian(1.1, 0.01, 10_000)]
    pld, prv, rdp = (compute_epsilon(mech, DELTA, a) for a in ("pld", "prv", "rdp"))
    assert 5.15 < pld < 5.25
    assert abs(prv - pld) / pld < 0.01
    assert 5.55 < rdp < 5.7


def test_heterogeneous_composition_matches_dp_accounting_and_merges_equal_releases():
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    releases = [SubsampledGaussian(1.0, 0.01, 300), SubsampledGaussian(2.0, 0.1, 50), SubsampledGaussian(1.0, 0.01, 700)]
    acc = pld_privacy_accountant.PLDAccountant()
    for r in releases:
        acc.compose(dp_accounting.PoissonSampledDpEvent(r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier)), r.steps)
    ref = acc.get_epsilon(DELTA)
    ours = compute_epsilon(releases, DELTA)
    assert abs(ours - ref) <= 0.01 * ref
    # composing more can only cost more; order does not matter
    assert compute_epsilon(releases[:1], DELTA) < ours
    assert compute_epsilon(list(reversed(releases)), DELTA) == pytest.approx(ours, rel=1e-9)
    assert compute_epsilon(releases, DELTA, "rdp") >= ours


def test_empty_and_noiseless_releases():
    assert compute_epsilon([], DELTA) == 0.0
    assert compute_epsilon([SubsampledGaussian(1.0, 0.1, 0)], DELTA) == 0.0
    assert compute_epsilon([SubsampledGaussian(1.0, 0.1, 10), SubsampledGaussian(0.0, 0.1, 1)], DELTA) == math.inf


def test_noise_for_epsilon_meets_target_tightly_with_prior():
    z = noise_for_epsilon(2.0, 0.1, 100, DELTA)
    eps = compute_epsilon([SubsampledGaussian(z, 0.1, 100)], DELTA)
    assert 1.99 < eps <= 2.0
    assert compute_epsilon([SubsampledGaussian(z * 0.99, 0.1, 100)], DELTA) > 2.0
    prior = [SubsampledGaussian(2.0, 0.1, 50)]
    z2 = noise_for_epsilon(3.0, 0.1, 100, DELTA, prior=prior)
    assert 2.98 < compute_epsilon(prior + [SubsampledGaussian(z2, 0.1, 100)], DELTA) <= 3.0
    with pytest.raises(AccountingError, match="already spend"):
        noise_for_epsilon(0.5, 0.1, 100, DELTA, prior=prior)


def test_max_steps_for_epsilon_is_the_largest_that_fits():
    t = max_steps_for_epsilon(1.0, 1.0, 0.01, DELTA, accountant="rdp")
    assert compute_epsilon([SubsampledGaussian(1.0, 0.01, t)], DELTA, "rdp") <= 1.0
    assert compute_epsilon([SubsampledGaussian(1.0, 0.01, t + 1)], DELTA, "rdp") > 1.0
    assert max_steps_for_epsilon(0.01, 0.5, 0.5, DELTA) == 0
    assert max_steps_for_epsilon(1.0, 0.0, 0.01, DELTA) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise_multiplier=-1, sample_rate=0.1, steps=1), "noise multiplier"),
        (dict(noise_multiplier=1, sample_rate=0, steps=1), "sample rate"),
        (dict(noise_multiplier=1, sample_rate=0.1, steps=1.5), "steps"),
    ],
)
def test_bad_mechanisms_raise_one_typed_error(kwargs, match):
    with pytest.raises(AccountingError, match=match):
        SubsampledGaussian(**kwargs)


def test_bad_delta_and_accountant():
    with pytest.raises(AccountingError, match="delta"):
        compute_epsilon([SubsampledGaussian(1, 0.1, 1)], 0.0)
    with pytest.raises(AccountingError, match="unknown accountant"):
        compute_epsilon([SubsampledGaussian(1, 0.1, 1)], DELTA, "moments")
    with pytest.raises(AccountingError, match="unreliable"):
        compute_epsilon([SubsampledGaussian(0.5, 0.1, 10_000)], DELTA, "prv")


def test_cli_noise_json_and_error_line():
    res = runner.invoke(app, ["privacy", "noise", "--epsilon", "2", "--sample-rate", "0.01", "--steps", "1000",
                              "--delta", "1e-5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"epsilon", "delta", "accountant", "noise_multiplier"} <= set(out)
    assert out["epsilon"] <= 2.0 and out["accountant"] == "pld"
    bad = cli("privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "2", "--steps", "10")
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "sample rate must be in (0, 1]" in bad.stderr
    assert "Traceback" not in bad.stderr
