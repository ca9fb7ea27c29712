"""Acceptance 5: bytes a device uploads per round, measured on Flower's serialised objects."""

from __future__ import annotations

import numpy as np
import pytest

from federation.wire import content_nbytes, content_to_update, wire_to_content
from federation.update import build_update, encode

# The shared adapter of MiniLM-L6 (hidden 384) with LoRA r=4 on the top layer's query/value
# and a head over 5 labels: the smallest real adapter homebody federates.
SPEC = {f"encoder.layer.5.attention.self.{m}.lora_{ab}.default.weight": ((4, 384) if ab == "A" else (384, 4))
        for m in ("query", "value") for ab in ("A", "B")}
SPEC |= {"head.weight": (5, 384), "head.bias": (5,)}


def _sent_bytes(encoding: str) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    delta = {k: rng.standard_normal(s).astype(np.float32) for k, s in SPEC.items()}
    update, _ = build_update(delta, SPEC, round=1, device_id="d", clip_norm=1.0, sigma=1.0, rng=rng, encoding=encoding)
    content = wire_to_content(encode(update, rng), {"bytes-up": 0.0, "epsilon": 1.0})
    back = content_to_update(content)
    err = max(float(np.max(np.abs(back.arrays[k] - update.arrays[k]))) for k in SPEC)
    return content_nbytes(content), err


def test_int8_uploads_at_most_a_third_of_fp32():
    sizes = {enc: _sent_bytes(enc)[0] for enc in ("fp32", "fp16", "int8")}
    assert sizes["int8"] * 3 <= sizes["fp32"], sizes
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    d = sum(int(np.prod(s)) for s in SPEC.values())
    assert 4 * d <= sizes["fp32"] <= 4 * d + 4096  # payload plus a few KB of Flower framing


@pytest.mark.parametrize("encoding, tolerance", [("fp32", 0.0), ("fp16", 5e-3), ("int8", 0.05)])
def test_what_arrives_is_what_was_sent(encoding, tolerance):
    assert _sent_bytes(encoding)[1] <= tolerance
