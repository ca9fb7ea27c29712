"""The wire: clipping, noise, encodings and the one check used on both ends."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from federation.config import FederationConfig, FederationConfigError
from federation.update import (
    Update,
    UpdateHeader,
    UpdateRejected,
    WireUpdate,
    build_update,
    check_update,
    decode,
    encode,
    l2_norm,
    spec_of,
)

SPEC = {"lora_A": (4, 64), "lora_B": (64, 4), "head.weight": (10, 64)}


def _delta(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SPEC.items()}


def _build(delta, sigma=1.0, clip=0.5, encoding="fp32", seed=1, observe=None):
    return build_update(delta, SPEC, round=1, device_id="d0", clip_norm=clip, sigma=sigma,
                        rng=np.random.default_rng(seed), encoding=encoding, observe=observe)


def test_clip_then_noise_has_the_promised_statistics():
    seen = {}
    update, raw = _build(_delta(3.0), sigma=2.0, clip=0.5, observe=lambda stage, a: seen.update({stage: a}))
    clipped = seen["clipped"]
    assert raw > 0.5 and l2_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    noise = np.concatenate([(update.arrays[k] - clipped[k]).ravel() for k in SPEC])
    # KS test against N(0, (sigma*C)^2) = N(0, 1): fixed seed, so deterministic.
    assert stats.kstest(noise / 1.0, "norm").pvalue > 0.01
    assert np.std(noise) == pytest.approx(1.0, rel=0.05)


def test_small_delta_is_not_scaled_up():
    delta = _delta(1e-4)
    seen = {}
    _build(delta, sigma=0.0, observe=lambda s, a: seen.update({s: a}))
    assert l2_norm(seen["clipped"]) == pytest.approx(l2_norm(delta), rel=1e-6)


def test_names_outside_the_spec_never_leave():
    delta = _delta(1.0) | {"personal.head": np.ones(3, np.float32)}
    update, _ = _build(delta)
    assert set(update.arrays) == set(SPEC)


@pytest.mark.parametrize("encoding", ["fp32", "fp16", "int8"])
def test_encodings_round_trip_within_their_error(encoding):
    update, _ = _build(_delta(1.0), encoding=encoding)
    wire = encode(update, np.random.default_rng(3))
    back = decode(wire)
    check_update(back, SPEC, 0.5, sigma=1.0)
    err = max(float(np.max(np.abs(back.arrays[k] - update.arrays[k]))) for k in SPEC)
    peak = max(float(np.max(np.abs(update.arrays[k]))) for k in SPEC)
    assert err <= {"fp32": 0.0, "fp16": peak * 2**-10, "int8": peak / 127}[encoding] + 1e-7


def test_int8_stochastic_rounding_is_unbiased_and_under_a_third_of_fp32():
    x = np.full((2000,), 0.3, np.float32)
    x[0] = 1.27  # scale = 0.01, so 0.3 sits on the grid at 30 steps... shift it off the grid
    x[1:] = 0.3049
    update = Update(UpdateHeader(1, "d", 2.0, 0.0, "int8"), {"w": x})
    wire = encode(update, np.random.default_rng(0))
    mean = decode(wire).arrays["w"][1:].mean()
    assert mean == pytest.approx(0.3049, abs=2e-4)  # floor would give 0.30, nearest 0.30 too
    fp32 = encode(Update(UpdateHeader(1, "d", 2.0, 0.0, "fp32"), {"w": x}), np.random.default_rng(0))
    assert wire.nbytes() * 3 <= fp32.nbytes()


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({**_delta(0.01), "extra": np.zeros(2, np.float32)}, "wrong-name"),
        ({k: v for k, v in list(_delta(0.01).items())[:2]}, "wrong-name"),
        ({**_delta(0.01), "lora_A": np.zeros((4, 63), np.float32)}, "wrong-shape"),
        ({**_delta(0.01), "lora_B": np.full((64, 4), np.nan, np.float32)}, "non-finite"),
        ({**_delta(0.01), "lora_B": np.full((64, 4), np.inf, np.float32)}, "non-finite"),
        (_delta(100.0), "over-norm"),
    ],
)
def test_check_names_the_reason(arrays, reason):
    with pytest.raises(UpdateRejected) as info:
        check_update(Update(UpdateHeader(1, "d", 0.5, 1.0), arrays), SPEC, 0.5, sigma=1.0)
    assert info.value.reason == reason


def test_nan_survives_int8_encoding_as_a_rejection():
    arrays = {**_delta(0.01), "lora_B": np.full((64, 4), np.nan, np.float32)}
    wire = encode(Update(UpdateHeader(1, "d", 0.5, 1.0, "int8"), arrays), np.random.default_rng(0))
    with pytest.raises(UpdateRejected) as info:
        check_update(decode(wire), SPEC, 0.5, sigma=1.0)
    assert info.value.reason == "non-finite"


def test_honest_noised_updates_pass_the_server_bound():
    for seed in range(20):
        update, _ = _build(_delta(5.0, seed), sigma=3.0, seed=seed, encoding="int8")
        check_update(decode(encode(update, np.random.default_rng(seed))), SPEC, 0.5, sigma=3.0)


def test_bad_header_is_a_typed_rejection():
    wire = WireUpdate({"round": "x"}, {"w": np.zeros(1, np.float32)})
    with pytest.raises(UpdateRejected) as info:
        decode(wire)
    assert info.value.reason == "bad-header"


def test_config_round_trips_through_a_flat_record_and_refuses_nonsense():
    cfg = FederationConfig(rounds=5, mode="secagg", encoding="int8", secagg_min_devices=4, seed=7)
    assert FederationConfig.from_record(cfg.to_record() | {"server-round": 2}) == cfg
    assert cfg.device_sigma == pytest.approx(cfg.noise_multiplier / 2)
    with pytest.raises(FederationConfigError, match="odd"):
        FederationConfig(secagg_num_shares=4)
    with pytest.raises(FederationConfigError, match="encoding"):
        FederationConfig(encoding="int4")
    assert spec_of({"a": np.zeros((2, 3))}) == {"a": (2, 3)}
