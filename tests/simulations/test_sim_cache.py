"""The frozen-feature cache keeps memory bounded by spilling to disk, and gives back equal tensors."""

from __future__ import annotations

import torch

from simulations.devices import FeatureCache
from simulations.devices import quantized_rate


def test_cache_spills_to_disk_and_reads_back(tmp_path):
    cache = FeatureCache(tmp_path, mem_bytes=3 * 11_000)  # room for about three entries of ~10.7 kB
    stored = {}
    for i in range(8):
        key = (64, tuple(f"text {i} {j}" for j in range(4)))
        value = (torch.arange(4 * 10).reshape(4, 10), torch.ones(4, 10), torch.randn(4, 10, 64) + i)
        cache[key] = value
        stored[key] = value
    assert len(cache) == 8
    assert sum(t.numel() * t.element_size() for v in cache._mem.values() for t in v) <= cache.mem_bytes
    assert len(list(tmp_path.glob("*.pt"))) >= 5
    for key, value in stored.items():
        assert key in cache
        for a, b in zip(cache[key], value):
            assert torch.equal(a, b)
    assert (64, ("unknown",)) not in cache
    cache.clear_files()
    assert not list(tmp_path.glob("*.pt"))


def test_sample_rate_is_a_power_of_two_fraction():
    assert quantized_rate(16, 10) == 1.0
    assert quantized_rate(16, 64) == 0.25
    assert quantized_rate(16, 48) == 0.25 and quantized_rate(16, 40) == 0.5


def test_batched_encoding_equals_each_device_encoded_alone(tmp_path):
    """encode_all batches many devices' texts through the frozen layers; every stored entry must
    be what the model computes for that device's list on its own."""
    from personal.adapter import LoraSettings
    from personal.models import load_base
    from personal.training import wrap
    from simulations.devices import attach_feature_cache, encode_all

    pm = wrap(load_base("tiny"), LoraSettings(r=2, alpha=4, layers=(-1,)))
    lists = [["wake at home", "coffee"], ["gym on a long monday evening after work", "lunch", "sleep"], ["tea"]]
    alone = [pm.tokenize(texts, 32) for texts in lists]
    alone = [(ids, mask, pm.features(ids, mask)) for ids, mask in alone]
    attach_feature_cache(pm, FeatureCache(tmp_path, mem_bytes=1 << 20))
    encode_all(pm, lists, 32, chunk=4)
    for texts, expected in zip(lists, alone):
        assert pm.has_features(texts, 32)
        for got, want in zip(pm.encode(texts, 32), expected):
            assert got.shape == want.shape
            assert torch.allclose(got.float(), want.float(), atol=1e-5)
