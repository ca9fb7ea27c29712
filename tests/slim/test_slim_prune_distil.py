"""Structured pruning really shrinks the matrices (and keeps the model working); distillation
moves a pruned student towards its teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from personal.models import load_base
from personal.slim.distil import DistilConfig, distil, perplexity
from personal.slim.manifest import SlimError
from personal.slim.pipeline import SlimConfig, run_slim
from personal.slim.prune import PruneConfig, prune_model
from personal.slim.texts import HELDOUT, TRAIN, load_texts

TEXTS = [
    "the gym opens at seven and she goes on monday wednesday and friday",
    "coffee at eight fifteen then the office until six in the evening",
    "on saturday the park, on sunday the cinema if it rains",
    "to be or not to be, that is the question",
] * 4


@pytest.fixture(scope="module")
def tok():
    return load_base("tiny").tokenizer


def _gqa_llama(vocab: int) -> LlamaForCausalLM:
    """A tiny Llama with GQA (6 query heads over 2 KV heads) so head pruning has groups."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=4, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=16, intermediate_size=96, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_llama_prune_mlp_heads_layers_shrinks_and_runs(tok):
    model = _gqa_llama(tok.vocab_size)
    done = prune_model(model, PruneConfig(mlp=0.25, heads=1, layers=1), tok, TEXTS)
    assert done["intermediate_size"] == 72 and done["attention_heads"] == 4 and len(done["dropped_layers"]) == 1
    assert done["parameters_after"] < done["parameters_before"]
    block = model.model.layers[0]
    assert block.mlp.gate_proj.out_features == 72 and block.mlp.down_proj.in_features == 72
    assert block.self_attn.q_proj.out_features == 4 * 16 and block.self_attn.o_proj.in_features == 4 * 16
    assert len(model.model.layers) == 3 == model.config.num_hidden_layers
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    enc = tok(TEXTS[:2], return_tensors="pt", padding=True)
    logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits).all()
    out = model.generate(enc["input_ids"][:1], max_new_tokens=3, do_sample=False)  # KV cache over renumbered layers
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


def test_pruning_keeps_the_most_important_channels(tok):
    """Zeroing most MLP channels' output columns makes them unimportant: pruning must drop those."""
    model = _gqa_llama(tok.vocab_size)
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.down_proj.weight[:, 24:] = 0.0
    enc = tok(TEXTS[:4], return_tensors="pt", padding=True)
    before = model(**enc).logits
    prune_model(model, PruneConfig(mlp=0.75), tok, TEXTS)  # keep 24 of 96
    assert torch.allclose(model(**enc).logits, before, atol=1e-5)


def test_encoder_pruning_and_refusals(tok):
    base = load_base("tiny")
    ids = tok(TEXTS[:2], return_tensors="pt", padding=True)
    done = prune_model(base.model, PruneConfig(mlp=0.5, layers=1), tok, TEXTS)
    assert done["intermediate_size"] == 32 and base.model.config.num_hidden_layers == 1
    assert base.model(**ids).last_hidden_state.shape[-1] == 32
    with pytest.raises(SlimError, match="Llama-like decoders only"):
        prune_model(load_base("tiny").model, PruneConfig(heads=1), tok, TEXTS)
    with pytest.raises(SlimError, match="needs calibration text"):
        prune_model(load_base("tiny").model, PruneConfig(layers=1))
    with pytest.raises(SlimError, match="prune ratio"):
        prune_model(load_base("tiny").model, PruneConfig(mlp=1.0))


def test_distillation_brings_a_pruned_student_closer_to_its_teacher(tok):
    teacher = _gqa_llama(tok.vocab_size)
    # Give the teacher something to know: a few steps of plain LM training on the texts.
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    enc = tok(TEXTS[:4], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for _ in range(20):
        opt.zero_grad()
        teacher(**enc, labels=labels).loss.backward()
        opt.step()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    prune_model(student, PruneConfig(mlp=0.75, layers=2), tok, TEXTS)

    def gap() -> float:
        with torch.no_grad():
            t, s = teacher(**enc).logits, student(**enc).logits
        kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        return float((kl * enc["attention_mask"]).sum() / enc["attention_mask"].sum())

    ppl_teacher = perplexity(teacher, tok, TEXTS[:4])
    gap_before, ppl_before = gap(), perplexity(student, tok, TEXTS[:4])
    record = distil(student, teacher, tok, TEXTS[:4], DistilConfig(steps=15, batch_size=4, lr=1e-3, alpha=1.0, max_length=24))
    gap_after, ppl_after = gap(), perplexity(student, tok, TEXTS[:4])
    assert record["loss_last"] < record["loss_first"]
    assert gap_after < 0.7 * gap_before, (gap_before, gap_after)
    assert ppl_teacher < ppl_before and abs(ppl_after - ppl_teacher) < abs(ppl_before - ppl_teacher)
    assert not any(p.requires_grad for p in student.parameters())  # frozen again afterwards


def test_distil_refuses_mismatched_pair(tok):
    teacher = _gqa_llama(tok.vocab_size)
    student = _gqa_llama(tok.vocab_size)
    student.resize_token_embeddings(tok.vocab_size + 8)
    with pytest.raises(SlimError, match="vocabularies differ"):
        distil(student, teacher, tok, TEXTS, DistilConfig(steps=1))
    with pytest.raises(SlimError, match="both be causal"):
        distil(load_base("tiny").model, teacher, tok, TEXTS, DistilConfig(steps=1))


def test_pipeline_records_each_step_with_its_perplexity_cost(tok):
    base = load_base("tiny-causal")
    teacher = load_base("tiny-causal")
    cfg = SlimConfig(quantize="int8", prune=PruneConfig(mlp=0.5), distil=DistilConfig(steps=3, batch_size=4, max_length=16))
    _, manifest = run_slim(base, cfg, teacher=teacher, texts=TEXTS, heldout=TEXTS[:4])
    assert manifest.step_names() == ["prune", "distil", "quantize"]
    for step in manifest.steps:
        ppl = step["heldout_perplexity"]
        assert ppl["before"] > 0 and ppl["after"] > 0
    assert manifest.steps[1]["teacher"] == teacher.identity()
    with pytest.raises(SlimError, match="needs a teacher"):
        run_slim(load_base("tiny-causal"), SlimConfig(quantize=None, distil=DistilConfig(steps=1)), texts=TEXTS)


def test_shipped_texts_split_without_overlap(data_root):
    from tests.conftest import require_dataset

    require_dataset(data_root, "shakespeare_roles")
    train = load_texts("shakespeare_roles", TRAIN, limit=400)
    held = load_texts("shakespeare_roles", HELDOUT, limit=400)
    assert train and held and not set(train) & set(held)
    with pytest.raises(SlimError, match="unknown text source"):
        load_texts("nope")
