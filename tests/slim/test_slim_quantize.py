"""Quantized layers: numerics, and gradients reaching EVERY LoRA adapter on the quantized path
(plain backward, opacus per-sample gradients, and personal.training's DP-SGD)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from personal.models import load_base
from personal.slim.quantize import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    Int8WeightOnlyLinear,
    QuantConfig,
    QuantizationError,
    QuantLinearBase,
    dequantize_int4,
    quantize_int4,
    quantize_model,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_causal():
    return load_base("tiny-causal")


def _with_lora(model, seed: int = 1, targets=TARGETS) -> dict[str, torch.nn.Parameter]:
    """LoRA on ``targets`` of every block, with random (non-zero) A and B so all get gradients."""
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)), model)
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for p in params.values():
            p.requires_grad_(True)
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return params


def test_int8_and_int4_layers_match_float():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(7, 64)
    ref = lin(x)
    for layer, tol in ((Int8Linear.from_float(lin), 0.05), (Int8WeightOnlyLinear.from_float(lin), 0.02),
                       (Int4Linear.from_float(lin, 32), 0.15)):
        assert layer.qweight.dtype in (torch.int8, torch.uint8)
        assert not list(layer.parameters())  # frozen: nothing for an optimiser to touch
        rel = (layer(x) - ref).abs().max() / ref.abs().max()
        assert rel < tol, (type(layer).__name__, float(rel))
        # many rows take the dense path (int4, weight-only int8): same answer as the few-row kernel
        assert torch.allclose(layer(x.repeat(4, 1))[:7], layer(x), atol=0.05)
    q, sz = quantize_int4(lin.weight, 32)
    assert q.shape == (48, 32) and q.dtype == torch.uint8
    assert (dequantize_int4(q, sz, 32) - lin.weight).abs().max() <= (lin.weight.max() - lin.weight.min()) / 15


def test_int8_activation_scale_is_per_token():
    """One outlier token in a call must not wreck the others (the kernel's own scale is per call)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=True)
    layer = Int8Linear.from_float(lin)
    x = torch.randn(16, 64)
    x[0] *= 1000.0
    ref = lin(x)
    rel = (layer(x)[1:] - ref[1:]).abs().max() / ref[1:].abs().max()
    assert rel < 0.05, float(rel)


def test_embedding_and_tied_head_share_codes(tiny_causal):
    model = copy.deepcopy(tiny_causal.model)
    model.lm_head.weight = model.model.embed_tokens.weight  # tie, as SmolLM2 is
    layout = quantize_model(model, QuantConfig())
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert layout["lm_head"] == "tied:model.embed_tokens"
    assert model.lm_head.qweight.data_ptr() == model.model.embed_tokens.qweight.data_ptr()
    assert all(isinstance(m, QuantLinearBase) for n, m in model.named_modules() if type(m).__name__.endswith("Linear")
               and "lora" not in n)


def test_quantized_model_copies_and_pickles(tiny_causal, tmp_path):
    q = copy.deepcopy(tiny_causal.model)
    quantize_model(q, QuantConfig(scheme="int4"))
    ids = torch.randint(5, 1000, (1, 6))
    ref = q(input_ids=ids).logits
    assert torch.equal(copy.deepcopy(q)(input_ids=ids).logits, ref)
    torch.save(q, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=False)(input_ids=ids).logits, ref)


def test_bad_scheme_is_one_clear_error(tiny_causal):
    with pytest.raises(QuantizationError, match="unknown quantization"):
        quantize_model(copy.deepcopy(tiny_causal.model), QuantConfig(scheme="int3"))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_gradients_reach_every_adapter_and_match_float(tiny_causal, scheme):
    torch.manual_seed(0)
    fp = copy.deepcopy(tiny_causal.model)
    q = copy.deepcopy(tiny_causal.model)
    quantize_model(q, QuantConfig(scheme=scheme))
    pf, pq = _with_lora(fp), _with_lora(q)
    assert len(pq) == 2 * len(TARGETS) * 2  # A and B for 7 targets in each of 2 layers
    ids = torch.randint(5, 1000, (4, 12))
    for model in (fp, q):
        model(input_ids=ids, labels=ids).loss.backward()
    for name, p in pq.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), pf[name].grad.flatten(), dim=0)
        assert cos > (0.99 if scheme == "int8" else 0.9), (name, float(cos))


def test_plain_int8_kernel_cuts_the_graph_which_the_custom_backward_fixes(tiny_causal, monkeypatch):
    """The trap NOTES-stack.md describes. With LoRA on q_proj/v_proj only (the default), their
    outputs reach the loss only through attention and the quantized o_proj: the plain int8 op has
    no backward (PyTorch merely warns), so these adapters silently get no gradient at all."""
    ids = torch.randint(5, 1000, (2, 8))

    def grads(plain: bool) -> dict[str, float]:
        q = copy.deepcopy(tiny_causal.model)
        # All layers on the dynamic kernel (the weight-only kernel at least raises under autograd).
        quantize_model(q, QuantConfig(weight_only=()))
        params = _with_lora(q, targets=("q_proj", "v_proj"))
        with monkeypatch.context() as m:
            if plain:
                m.setattr(QuantLinearBase, "forward", lambda self, x: self.kernel(x))
            with pytest.warns(UserWarning, match="autograd kernel was not registered") if plain else _nothing():
                q.model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        return {n: 0.0 if p.grad is None else float(p.grad.abs().sum()) for n, p in params.items()}

    plain, ours = grads(plain=True), grads(plain=False)
    assert all(v == 0.0 for v in plain.values()), "expected the plain kernel to starve every adapter"
    assert all(v > 0.0 for v in ours.values()), [n for n, v in ours.items() if v == 0.0]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_opacus_per_sample_gradients_nonzero_for_every_adapter(tiny_causal):
    from opacus import GradSampleModule

    q = copy.deepcopy(tiny_causal.model)
    quantize_model(q, QuantConfig())
    params = _with_lora(q)
    gsm = GradSampleModule(q, batch_first=True, loss_reduction="mean")
    ids = torch.randint(5, 1000, (3, 10))
    gsm(input_ids=ids, labels=ids).loss.backward()
    for name, p in params.items():
        assert p.grad_sample is not None, name
        per_example = p.grad_sample.flatten(1).norm(dim=1)
        assert per_example.shape == (3,) and bool((per_example > 0).all()), f"zero per-sample gradient in {name}"
    gsm._close()


@pytest.mark.parametrize("name", ["tiny-causal:int8", "tiny:int8"])
def test_dp_training_on_quantized_base_moves_every_adapter(name, tmp_path, monkeypatch):
    """personal.training's DP-SGD (clipping, noise 0 so only gradients move weights) on a slim base."""
    monkeypatch.setenv("HOMEBODY_CACHE", str(tmp_path))
    from personal.examples import Example
    from personal.training import DPConfig, LoraSettings, TrainConfig, train_adapter, wrap

    base = load_base(name)
    assert base.name == name and isinstance(base.model.get_input_embeddings(), Int8Embedding)
    lora = LoraSettings(r=4, alpha=8, layers=None)
    pm = wrap(base, lora)
    initial = {n: p.detach().clone() for n, p in pm.lora_params.items()}
    labels = ["gym", "cafe", "office"]
    examples = [Example(text=f"monday {h}:00 after {labels[(i + 1) % 3]}", label=labels[i % 3])
                for i, h in enumerate(range(40))]
    cfg = TrainConfig(lora=lora, epochs=3, batch_size=8, lr=0.05, max_length=16)
    result = train_adapter(base, examples, labels, cfg, DPConfig(noise_multiplier=0.0, max_grad_norm=1.0))
    assert not result.non_private and result.steps >= 10
    unmoved = [n for n, p in pm.lora_params.items() if torch.equal(p.detach(), initial[n])]
    assert not unmoved, f"adapters that never received a gradient: {unmoved}"
