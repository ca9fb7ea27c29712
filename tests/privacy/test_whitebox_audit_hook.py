"""The white-box audit of real local DP-SGD: canaries through opacus, every noisy step observed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personal.audit_hook import AuditHookError, CanaryConfig, GradientCanaryAudit, InjectedBug
from simulations.empirical_audit import AuditConfigError, WhiteBoxAuditConfig, run_whitebox_audit

# Seeded DP noise: these tests assert on one run's statistics (a correct run is not flagged, a planted
# bug is), which with the CSPRNG would fail about once in 1 / (1 - confidence) runs by chance.
SMALL = dict(canaries=4000, examples=32, lora_rank=32, sample_rate=0.5, epochs=50.0, noise_rng="seeded")


def test_correct_run_is_consistent_and_its_scores_have_the_expected_shape():
    rep = run_whitebox_audit(WhiteBoxAuditConfig(epsilon=4.0, seed=0, **SMALL))
    assert not rep.flagged and rep.steps == 100
    assert 0.5 < rep.epsilon_lower < 4.0 and rep.gaussian_epsilon_lower < 4.0
    assert rep.accountant_epsilon == pytest.approx(4.0, rel=1e-2)
    g = rep.audit["gaussian"]
    # Out canaries see only the optimizer's noise: std z * sqrt(T); in canaries gain q * T on average.
    assert g["std_out"] == pytest.approx(rep.noise_multiplier * math.sqrt(rep.steps), rel=0.06)
    assert g["mean_in"] - g["mean_out"] == pytest.approx(rep.sample_rate * rep.steps, abs=4 * g["std_out"] / math.sqrt(1000))


@pytest.mark.parametrize("bug", [InjectedBug(noise_scale=0.5), InjectedBug(noise_scale=0.0),
                                 InjectedBug(sample_rate_scale=2.0)])
def test_planted_bugs_are_flagged_while_the_claim_stays(bug):
    cfg = WhiteBoxAuditConfig(epsilon=4.0, seed=1, **{**SMALL, "sample_rate": 0.25, "epochs": 25.0})
    rep = run_whitebox_audit(cfg, _test_only_bug=bug)
    assert rep.flagged and rep.claimed_epsilon == 4.0 and rep.accountant_epsilon == pytest.approx(4.0, rel=1e-2)
    assert rep.injected_bug == {"noise_scale": bug.noise_scale, "sample_rate_scale": bug.sample_rate_scale}
    if bug.noise_scale == 0.0:
        assert rep.epsilon_lower > 4.0 and rep.gaussian_epsilon_lower > 20  # out canaries score exactly 0


def _train(dp, canaries: int, rank: int = 8, steps_epochs: float = 2.0):
    from personal.adapter import LoraSettings
    from personal.models import load_base
    from personal.training import TrainConfig, train_adapter
    from simulations.empirical_audit import _whitebox_examples

    examples, labels = _whitebox_examples(WhiteBoxAuditConfig(examples=16))
    hook = GradientCanaryAudit(CanaryConfig(canaries=canaries, seed=3))
    cfg = TrainConfig(lora=LoraSettings(r=rank), epochs=steps_epochs, sample_rate=0.5, optimizer="sgd", max_length=16)
    res = train_adapter(load_base("tiny"), examples, labels, cfg, dp, audit=hook)
    return hook, res


def _secure_dp(**kw):
    """A DPConfig drawing from the OS CSPRNG, in either spelling of personal.training's field."""
    from personal.training import DPConfig

    field = {"rng": "os-csprng"} if "rng" in DPConfig.__dataclass_fields__ else {"secure_rng": True}
    return DPConfig(**kw, **field)


def test_secure_rng_run_is_scored_at_every_step():
    from personal.audit_hook import uses_os_csprng

    dp = _secure_dp(noise_multiplier=1.0)
    assert uses_os_csprng(dp)
    hook, res = _train(dp, canaries=500)
    assert hook.scores.steps == res.steps == 4
    assert np.all(np.isfinite(hook.scores.total)) and hook.scores.total.std() > 0


def test_bad_settings_are_typed_errors():
    from personal.training import DPConfig, TrainingError

    with pytest.raises(AuditHookError):
        _train(DPConfig(noise_multiplier=1.0), canaries=10**6)  # more canaries than trainable coordinates
    with pytest.raises(TrainingError):
        _train(DPConfig.non_private(), canaries=100)
    with pytest.raises(AuditHookError):
        CanaryConfig(canaries=2)
    with pytest.raises(AuditHookError):
        InjectedBug(noise_scale=-1)
    with pytest.raises(AuditConfigError):
        WhiteBoxAuditConfig(sample_rate=0.0)


def test_cli_white_box_prints_both_readings_next_to_the_claim_and_writes_json(tmp_path, monkeypatch, capsys):
    import json

    from tests.cli_support import run_homebody

    out = tmp_path / "wb.json"
    code, stdout, stderr = run_homebody(monkeypatch, capsys, "audit", "empirical", "--white-box", "--epsilon", "4",
                                        "--canaries", "2000", "--examples", "16", "--epochs", "10", "--seed", "2",
                                        "--json", str(out))
    assert code == 0, stderr
    assert "claimed epsilon:            4" in stdout and "SNJ lower bound" in stdout and "Gaussian-shape" in stdout
    data = json.loads(out.read_text())
    assert data["claimed_epsilon"] == 4.0 and data["injected_bug"] is None and data["steps"] == 20
    assert data["epsilon_lower"] <= 4.0 and data["audit"]["gaussian"]["n_in"] + data["audit"]["gaussian"]["n_out"] == 2000
    code, _, stderr = run_homebody(monkeypatch, capsys, "audit", "empirical", "--white-box", "--no-noise")
    assert code != 0 and "black-box" in stderr and "Traceback" not in stderr
    code, _, stderr = run_homebody(monkeypatch, capsys, "audit", "empirical", "--white-box", "--canaries", "3")
    assert code != 0 and "canaries" in stderr
    code, _, stderr = run_homebody(monkeypatch, capsys, "audit", "empirical", "--white-box", "--batch-size", "10")
    assert code != 0 and "black-box" in stderr
    code, _, stderr = run_homebody(monkeypatch, capsys, "audit", "empirical", "--sample-rate", "0.1")
    assert code != 0 and "white-box" in stderr
