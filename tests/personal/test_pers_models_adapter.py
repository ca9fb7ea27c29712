"""Base registry identities and the adapter blob (acceptance 5: wrong base → clear error)."""

from __future__ import annotations

import numpy as np
import pytest

from personal.adapter import Adapter, AdapterError, AdapterMismatch, LoraSettings
from personal.models import ModelNotFound, load_base
from personal.training import DPConfig, TrainConfig, train_adapter, wrap
from personal.examples import events_to_examples, label_space
from tests.personal.pers_helpers import routine_owner


def test_unknown_base_is_one_typed_error() -> None:
    with pytest.raises(ModelNotFound, match="unknown base model 'gpt-9'"):
        load_base("gpt-9")


def test_tiny_bases_are_frozen_and_identified() -> None:
    enc, enc2, causal = load_base("tiny"), load_base("tiny-encoder"), load_base("tiny-causal")
    assert enc.kind == "encoder" and causal.kind == "causal"
    assert enc.identity()["sha256"] == enc2.identity()["sha256"] != causal.identity()["sha256"]
    assert len(enc.weights_sha256) == 64
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_adapter_roundtrip_and_refusal_on_another_base() -> None:
    events = routine_owner(weeks=2)
    enc, causal = load_base("tiny"), load_base("tiny-causal")
    cfg = TrainConfig(lora=LoraSettings(r=2, layers=(-1,)), epochs=1)
    res = train_adapter(enc, events_to_examples(events), label_space(events), cfg, DPConfig.non_private())
    blob = res.adapter.to_bytes()
    back = Adapter.from_bytes(blob)
    assert back.base_identity == enc.identity() and back.labels == label_space(events)
    assert back.lora == cfg.lora and back.sha256() == res.adapter.sha256()
    assert set(back.tensors) == set(res.adapter.tensors)
    assert all(np.array_equal(back.tensors[k], res.adapter.tensors[k]) for k in back.tensors)
    assert any("lora_A" in k for k in back.tensors) and "head.weight" in back.tensors
    # Loading onto the right base works; onto another base is refused with the names in the message.
    wrap(enc, cfg.lora).load_adapter(back)
    with pytest.raises(AdapterMismatch, match=r"trained on base 'tiny'.*not on 'tiny-causal'"):
        wrap(causal, cfg.lora).load_adapter(back)
    # Same architecture name but different weights (another seed) is refused too.
    other = load_base("tiny")
    other.weights_sha256 = "0" * 64
    with pytest.raises(AdapterMismatch):
        wrap(other, cfg.lora).load_adapter(back)


def test_damaged_adapter_bytes_are_one_typed_error() -> None:
    with pytest.raises(AdapterError, match="not a homebody adapter"):
        Adapter.from_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(AdapterError):
        Adapter.from_bytes(b"")
