"""Aggregation: bad updates never move the global adapter, and the log says why."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.server import aggregate
from federation.update import Update, UpdateHeader, build_update

SPEC = {"lora_A": (2, 8), "head.weight": (3, 8)}
CFG = FederationConfig(clip_norm=1.0, noise_multiplier=0.5)


def _global():
    return {k: np.ones(s, np.float32) for k, s in SPEC.items()}


def _honest(device: str, seed: int) -> Update:
    rng = np.random.default_rng(seed)
    delta = {k: rng.standard_normal(s).astype(np.float32) for k, s in SPEC.items()}
    return build_update(delta, SPEC, round=1, device_id=device, clip_norm=1.0, sigma=0.5, rng=rng)[0]


def _bad(kind: str) -> Update:
    arrays = {k: np.zeros(s, np.float32) for k, s in SPEC.items()}
    if kind == "nan":
        arrays["lora_A"][0, 0] = np.nan
    elif kind == "shape":
        arrays["lora_A"] = np.zeros((2, 9), np.float32)
    elif kind == "name":
        arrays["base.embeddings"] = arrays.pop("lora_A")
    elif kind == "norm":
        arrays["head.weight"] += 1e3
    return Update(UpdateHeader(1, f"evil-{kind}", 1.0, 0.5), arrays)


@pytest.mark.parametrize("kind, reason", [("nan", "non-finite"), ("shape", "wrong-shape"), ("name", "wrong-name"), ("norm", "over-norm")])
def test_a_bad_update_alone_leaves_the_global_unchanged(kind, reason, caplog):
    before = _global()
    with caplog.at_level(logging.WARNING, logger="homebody.federation.server"):
        out = aggregate(before, [_bad(kind)], SPEC, CFG, round=1)
    assert not out.changed and [r.reason for r in out.rejected] == [reason]
    for k in SPEC:
        np.testing.assert_array_equal(out.arrays[k], before[k])
    assert f"evil-{kind}" in caplog.text and reason in caplog.text


def test_bad_updates_do_not_change_the_mean_of_the_good_ones():
    good = [_honest("a", 1), _honest("b", 2)]
    clean = aggregate(_global(), good, SPEC, CFG, round=1)
    mixed = aggregate(_global(), good + [_bad(k) for k in ("nan", "shape", "name", "norm")], SPEC, CFG, round=1)
    assert mixed.accepted == ["a", "b"] and len(mixed.rejected) == 4
    for k in SPEC:
        np.testing.assert_array_equal(mixed.arrays[k], clean.arrays[k])
        expected = 1.0 + (good[0].arrays[k] + good[1].arrays[k]) / 2
        np.testing.assert_allclose(mixed.arrays[k], expected, rtol=1e-6)


def test_wrong_round_is_rejected():
    out = aggregate(_global(), [_honest("late", 3)], SPEC, CFG, round=2)
    assert [r.reason for r in out.rejected] == ["bad-header"] and not out.changed


def test_central_mode_noises_the_sum_on_the_server():
    cfg = FederationConfig(mode="central", clip_norm=1.0, noise_multiplier=2.0)
    zero = Update(UpdateHeader(1, "z", 1.0, 0.0), {k: np.zeros(s, np.float32) for k, s in SPEC.items()})
    big = {"w": (4000,)}
    zeros = [Update(UpdateHeader(1, f"z{i}", 1.0, 0.0), {"w": np.zeros(4000, np.float32)}) for i in range(2)]
    out = aggregate({"w": np.zeros(4000, np.float32)}, zeros, big, cfg, round=1, rng=np.random.default_rng(0))
    # two devices: mean = noise(sigma*C = 2) / 2  -> std 1
    assert np.std(out.arrays["w"]) == pytest.approx(1.0, rel=0.05)


def test_a_device_counts_once_per_round():
    first, again = _honest("a", 1), _honest("a", 2)
    out = aggregate(_global(), [first, again, _honest("b", 3)], SPEC, CFG, round=1)
    assert out.accepted == ["a", "b"]
    assert [(r.device_id, r.reason) for r in out.rejected] == [("a", "bad-header")] and "already" in out.rejected[0].detail
