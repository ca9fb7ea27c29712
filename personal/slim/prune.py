"""Structured pruning: whole MLP channels, attention heads and layers go, so the model is smaller
AND faster (dense kernels on narrower matrices; no sparse masks).

Importance, with calibration text (activation-aware, as in Wanda/LLM-Pruner-style scores):
- MLP channel j: mean |activation_j| over calibration tokens x the norm of its output column;
- query head h (Llama, same count removed in every KV group so GQA stays regular): mean norm of
  the head's attention output x the norm of its ``o_proj`` columns;
- layer: block influence 1 - cos(h_in, h_out) over calibration tokens (ShortGPT): the layers
  that change the hidden state least are dropped.
Without calibration text the channel and head scores fall back to weight norms; layer pruning
needs text. Architectures: Llama-like decoders and BERT-like encoders (heads: Llama only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from personal.slim.manifest import SlimError


@dataclass(frozen=True)
class PruneConfig:
    """``mlp``: fraction of MLP channels removed; ``heads``: query heads removed per KV group
    (Llama); ``layers``: number of whole layers removed."""

    mlp: float = 0.0
    heads: int = 0
    layers: int = 0

    def validate(self) -> None:
        """Raise ``SlimError`` on out-of-range settings."""
        if not 0.0 <= self.mlp < 1.0:
            raise SlimError(f"MLP prune ratio must be in [0, 1), got {self.mlp}")
        if self.heads < 0 or self.layers < 0:
            raise SlimError("heads and layers to prune must be >= 0")

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return self.mlp == 0 and self.heads == 0 and self.layers == 0


def _arch(model: nn.Module) -> str:
    if hasattr(getattr(model, "model", None), "layers"):
        return "llama"
    if hasattr(getattr(model, "encoder", None), "layer"):
        return "bert"
    raise SlimError(f"cannot prune {type(model).__name__}: only Llama-like decoders and BERT-like encoders")


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers if _arch(model) == "llama" else model.encoder.layer


def _new_linear(old: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A Linear keeping only output ``rows`` and input ``cols`` of ``old``."""
    w = old.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    b = old.bias.detach() if old.bias is not None else None
    if b is not None and rows is not None:
        b = b[rows]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _mlp_parts(block: nn.Module, arch: str) -> tuple[list[nn.Linear], nn.Linear]:
    """(the layers whose output rows are channels, the layer whose input columns are channels)."""
    if arch == "llama":
        return [block.mlp.gate_proj, block.mlp.up_proj], block.mlp.down_proj
    return [block.intermediate.dense], block.output.dense


class _Recorder:
    """Forward hooks collecting mean |activation| per channel and per-layer block influence."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        self.arch, self.handles = arch, []
        self.channel: dict[int, torch.Tensor] = {}
        self.head: dict[int, torch.Tensor] = {}
        self.influence: dict[int, list[float]] = {}
        for i, block in enumerate(_blocks(model)):
            _, down = _mlp_parts(block, arch)
            self.handles.append(down.register_forward_pre_hook(self._acc(self.channel, i)))
            if arch == "llama":
                self.handles.append(block.self_attn.o_proj.register_forward_pre_hook(self._acc(self.head, i)))
            self.handles.append(block.register_forward_hook(self._influence(i), with_kwargs=True))
        self.mask: torch.Tensor | None = None

    def _acc(self, store: dict, i: int):
        def hook(_mod, args):
            x = args[0].detach().float()
            m = self.mask.unsqueeze(-1).float() if self.mask is not None else torch.ones_like(x[..., :1])
            store[i] = store.get(i, 0) + (x.abs() * m).sum(dim=(0, 1))
        return hook

    def _influence(self, i: int):
        def hook(_mod, args, kwargs, out):
            h_in = (args[0] if args else kwargs["hidden_states"]).detach().float()
            h_out = (out[0] if isinstance(out, tuple) else out).detach().float()
            cos = nn.functional.cosine_similarity(h_in, h_out, dim=-1)
            m = self.mask.float() if self.mask is not None else torch.ones_like(cos)
            self.influence.setdefault(i, []).append(float(((1 - cos) * m).sum() / m.sum().clamp(min=1)))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def calibrate(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 128,
              batch: int = 8) -> _Recorder:
    """Run ``texts`` through the model and record the statistics the scores need."""
    arch = _arch(model)
    rec = _Recorder(model, arch)
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = tokenizer(list(texts[i:i + batch]), return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length)
                rec.mask = enc["attention_mask"]
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        rec.close()
    return rec


def _prune_mlp(model: nn.Module, arch: str, ratio: float, rec: _Recorder | None) -> int:
    blocks = _blocks(model)
    width = _mlp_parts(blocks[0], arch)[1].in_features
    keep_n = max(1, int(round(width * (1 - ratio))))
    for i, block in enumerate(blocks):
        ups, down = _mlp_parts(block, arch)
        col_norm = down.weight.detach().float().norm(dim=0)
        if rec is not None and i in rec.channel:
            score = rec.channel[i] * col_norm
        else:
            score = col_norm
            for up in ups:
                score = score * up.weight.detach().float().norm(dim=1)
        keep = torch.sort(torch.topk(score, keep_n).indices).values
        if arch == "llama":
            block.mlp.gate_proj = _new_linear(block.mlp.gate_proj, rows=keep)
            block.mlp.up_proj = _new_linear(block.mlp.up_proj, rows=keep)
            block.mlp.down_proj = _new_linear(down, cols=keep)
        else:
            block.intermediate.dense = _new_linear(ups[0], rows=keep)
            block.output.dense = _new_linear(down, cols=keep)
    model.config.intermediate_size = keep_n
    return keep_n


def _prune_heads(model: nn.Module, per_group: int, rec: _Recorder | None) -> int:
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    groups = n_heads // n_kv
    if per_group >= groups:
        raise SlimError(f"cannot remove {per_group} query heads per KV group: each group has {groups}")
    new_groups = groups - per_group
    if cfg.hidden_size % (n_kv * new_groups):
        raise SlimError(f"transformers needs hidden size {cfg.hidden_size} divisible by the head count: "
                        f"{n_kv * new_groups} heads after removing {per_group} per group do not fit")
    for i, block in enumerate(model.model.layers):
        attn = block.self_attn
        o_cols = attn.o_proj.weight.detach().float().reshape(-1, n_heads, head_dim).norm(dim=(0, 2))
        if rec is not None and i in rec.head:
            score = rec.head[i].reshape(n_heads, head_dim).sum(-1) * o_cols
        else:
            score = o_cols * attn.q_proj.weight.detach().float().reshape(n_heads, head_dim, -1).norm(dim=(1, 2))
        keep_heads = []
        for g in range(n_kv):  # head h uses KV head h // groups: keep the best of each group
            idx = torch.arange(g * groups, (g + 1) * groups)
            keep_heads += sorted(idx[torch.topk(score[idx], new_groups).indices].tolist())
        cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in keep_heads])
        attn.q_proj = _new_linear(attn.q_proj, rows=cols)
        attn.o_proj = _new_linear(attn.o_proj, cols=cols)
        attn.num_key_value_groups = new_groups
        if hasattr(attn, "num_heads"):
            attn.num_heads = n_kv * new_groups
    cfg.head_dim = head_dim
    cfg.num_attention_heads = n_kv * new_groups
    return cfg.num_attention_heads


def _prune_layers(model: nn.Module, arch: str, count: int, rec: _Recorder) -> list[int]:
    blocks = _blocks(model)
    if count >= len(blocks):
        raise SlimError(f"cannot remove {count} of {len(blocks)} layers")
    score = {i: sum(v) / len(v) for i, v in rec.influence.items()}
    drop = sorted(sorted(score, key=score.get)[:count])
    kept = [b for i, b in enumerate(blocks) if i not in drop]
    for new_i, block in enumerate(kept):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    if arch == "llama":
        model.model.layers = nn.ModuleList(kept)
    else:
        model.encoder.layer = nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return drop


def prune_model(model: nn.Module, cfg: PruneConfig, tokenizer: Any = None,
                texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Prune ``model`` in place (float weights) and update its config; return what was done."""
    cfg.validate()
    arch = _arch(model)
    if cfg.heads and arch != "llama":
        raise SlimError("head pruning is implemented for Llama-like decoders only")
    if cfg.layers and not texts:
        raise SlimError("layer pruning needs calibration text (--calibration DATASET)")
    before = sum(p.numel() for p in model.parameters())
    rec = calibrate(model, tokenizer, texts) if texts else None
    done: dict[str, Any] = {"calibrated": bool(texts), "calibration_texts": len(texts or [])}
    if cfg.layers:
        done["dropped_layers"] = _prune_layers(model, arch, cfg.layers, rec)
        # Channel and head scores were taken with all layers: re-index them to the kept ones.
        kept = [i for i in range(len(rec.influence)) if i not in done["dropped_layers"]]
        rec.channel = {n: rec.channel[o] for n, o in enumerate(kept) if o in rec.channel}
        rec.head = {n: rec.head[o] for n, o in enumerate(kept) if o in rec.head}
    if cfg.heads:
        done["attention_heads"] = _prune_heads(model, cfg.heads, rec)
    if cfg.mlp:
        done["intermediate_size"] = _prune_mlp(model, arch, cfg.mlp, rec)
    after = sum(p.numel() for p in model.parameters())
    done.update(parameters_before=before, parameters_after=after)
    return done
