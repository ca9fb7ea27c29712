"""DP-SGD really clips per example and adds noise (acceptance 3, first half); non-private is labelled."""

from __future__ import annotations

import numpy as np
import pytest

from personal.examples import events_to_examples, label_space
from personal.models import load_base
from personal.training import (DPConfig, LoraSettings, TrainConfig, TrainingError, _secure_normal, train_adapter,
                               wrap)
from tests.personal.pers_helpers import routine_owner

LORA = LoraSettings(r=2, layers=(-1,))


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny")


@pytest.fixture(scope="module")
def data():
    events = routine_owner(weeks=2)
    return events_to_examples(events), label_space(events)


def _one_step(base, data, dp: DPConfig):
    """One SGD step (lr 1) from a known start; returns (result, flat update)."""
    examples, labels = data
    pm = wrap(base, LORA)
    pm.clear(labels)
    with_head = pm.export_adapter()
    # A non-zero head so every LoRA matrix gets a gradient from the first step.
    rng = np.random.default_rng(0)
    with_head.tensors["head.weight"] = rng.normal(size=with_head.tensors["head.weight"].shape).astype(np.float32)
    cfg = TrainConfig(lora=LORA, epochs=0.2, batch_size=10, lr=1.0, optimizer="sgd", record_norms=True)
    res = train_adapter(base, examples, labels, cfg, dp, init=with_head)
    assert res.steps == 1
    delta = np.concatenate([(res.adapter.tensors[k] - with_head.tensors[k]).ravel() for k in sorted(with_head.tensors)])
    return res, delta, len(examples)


def test_per_example_clipping_is_applied(tiny, data) -> None:
    bound = 1e-3
    res, delta, n = _one_step(tiny, data, DPConfig(noise_multiplier=0.0, max_grad_norm=bound))
    (norms,) = res.grad_norms  # per-example gradient norms BEFORE clipping, one per sampled example
    assert len(norms) > 0 and np.all(norms > 10 * bound), norms
    expected_batch = round(10)
    applied = np.linalg.norm(delta)
    # The update is the sum of clipped per-example gradients / expected batch size: bounded by C * |B| / E[B].
    assert 0 < applied <= bound * len(norms) / expected_batch * (1 + 1e-4)
    # ...whereas the unclipped mean gradient would have been far larger.
    assert norms.mean() > 10 * applied


def test_noise_is_added_with_the_multiplier(tiny, data) -> None:
    bound = 1e-3
    res, delta, n = _one_step(tiny, data, DPConfig(noise_multiplier=2.0, max_grad_norm=bound))
    clipped_max = bound * len(res.grad_norms[0]) / 10
    # Gaussian noise of std z*C/E[B] on every coordinate dominates the clipped signal.
    expected_noise = 2.0 * bound / 10 * np.sqrt(delta.size)
    assert np.linalg.norm(delta) > 3 * clipped_max
    assert 0.7 * expected_noise < np.linalg.norm(delta) < 1.3 * expected_noise + clipped_max
    assert res.mechanism.noise_multiplier == 2.0 and res.mechanism.steps == 1
    assert res.privacy_label.startswith("DP-SGD epsilon=")


def test_secure_rng_noise_is_gaussian_with_the_right_scale() -> None:
    import torch

    x = _secure_normal((200_000,), 2.0, torch.float32).numpy()
    assert abs(x.mean()) < 0.02 and abs(x.std() - 2.0) < 0.02
    assert abs(((x / 2.0) ** 4).mean() - 3.0) < 0.1  # Gaussian kurtosis


def test_non_private_run_is_labelled_and_learns(tiny, data) -> None:
    examples, labels = data
    cfg = TrainConfig(lora=LORA, epochs=8, batch_size=16, lr=1e-2)
    res = train_adapter(tiny, examples, labels, cfg, DPConfig.non_private())
    assert res.non_private and res.mechanism is None and res.adapter.meta["non_private"] is True
    assert "NON-PRIVATE" in res.privacy_label
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])


def test_secure_rng_training_and_causal_lm_examples() -> None:
    causal = load_base("tiny-causal")
    events = routine_owner(weeks=1)
    events[3] = type(events[3])(events[3].user, events[3].timestamp, events[3].event, text="a short note")
    examples = events_to_examples(events)
    assert any(e.kind == "lm" for e in examples)
    cfg = TrainConfig(lora=LoraSettings(r=2), epochs=1, batch_size=8)
    res = train_adapter(causal, examples, label_space(events), cfg, DPConfig(noise_multiplier=1.0))  # CSPRNG by default
    assert res.adapter.meta["rng"] == "os-csprng" and res.adapter.meta["examples"] == len(examples)
    assert all(np.isfinite(v).all() for v in res.adapter.tensors.values())


def test_bad_settings_are_typed_errors(tiny, data) -> None:
    examples, labels = data
    with pytest.raises(TrainingError, match="exactly one of epsilon or noise"):
        train_adapter(tiny, examples, labels, TrainConfig(lora=LORA), DPConfig(epsilon=1.0, noise_multiplier=1.0))
    with pytest.raises(TrainingError, match="empty label space"):
        train_adapter(tiny, examples, [], TrainConfig(lora=LORA), DPConfig.non_private())


def test_a_loaded_base_rewraps_for_other_lora_settings(data) -> None:
    """One loaded base serves adapters of different LoRA settings in turn (issue 18: it refused the
    second setting, so a server that loaded a CLI-trained adapter answered 409 to the SDK's):
    the old LoRA layers go, the new ones come in, and going back reproduces the first adapter's answers."""
    import warnings

    base = load_base("tiny")
    plain = sum(1 for _ in base.model.named_parameters())
    examples, labels = data
    first = train_adapter(base, examples, labels, TrainConfig(lora=LORA, epochs=1, batch_size=16),
                          DPConfig.non_private()).adapter
    texts = [e.text for e in examples[:5]]
    pm = wrap(base, LORA)
    pm.load_adapter(first)
    before = pm.predict_proba(texts)
    other = LoraSettings(r=4, alpha=8, layers=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "multiple adapters" warning from peft: the old injection is gone
        pm2 = wrap(base, other)
    assert pm2 is not pm and pm2.lora == other and wrap(base, other) is pm2
    assert all(".lora_" in n for n in pm2.lora_params) and len(pm2.lora_params) == 4 * base.num_layers
    assert sum(1 for _ in base.model.named_parameters()) == plain + len(pm2.lora_params)
    second = train_adapter(base, examples, labels, TrainConfig(lora=other, epochs=1, batch_size=16),
                           DPConfig.non_private()).adapter
    assert second.lora == other
    back = wrap(base, LORA)
    back.load_adapter(first)
    np.testing.assert_allclose(back.predict_proba(texts), before, rtol=1e-5, atol=1e-6)
    assert sum(1 for _ in base.model.named_parameters()) == plain + len(back.lora_params)
