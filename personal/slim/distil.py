"""Knowledge distillation: a small student learns to imitate a larger teacher on shipped text.

Causal LMs: the student minimises ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``
per token (Hinton et al.), T the temperature. Encoders: the student matches the teacher's final
hidden states (MSE), which needs equal widths (a pruned student keeps the width). Student and
teacher must share the tokenizer (equal vocabulary sizes are checked). The student's token
embeddings (and a tied LM head) stay frozen: they are shared with the teacher's vocabulary and
are the largest single tensor, so freezing them saves memory and time on a phone-class CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from personal.slim.manifest import SlimError


@dataclass(frozen=True)
class DistilConfig:
    """Optimisation settings of a distillation run."""

    steps: int = 100
    batch_size: int = 8
    max_length: int = 64
    lr: float = 1e-4
    temperature: float = 2.0
    alpha: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        """Raise ``SlimError`` on out-of-range settings."""
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 2:
            raise SlimError("distillation needs steps >= 1, batch size >= 1 and max length >= 2")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0 or self.lr <= 0:
            raise SlimError("distillation needs 0 <= alpha <= 1, temperature > 0 and lr > 0")


def _is_causal(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") or hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
    s_vocab, t_vocab = student.config.vocab_size, teacher.config.vocab_size
    if s_vocab != t_vocab:
        raise SlimError(f"student and teacher vocabularies differ ({s_vocab} vs {t_vocab}): they must share a tokenizer")
    if _is_causal(student) != _is_causal(teacher):
        raise SlimError("student and teacher must both be causal LMs or both be encoders")
    if not _is_causal(student) and student.config.hidden_size != teacher.config.hidden_size:
        raise SlimError("encoder distillation matches hidden states: student and teacher need the same width")


def _loss(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
          cfg: DistilConfig) -> torch.Tensor:
    F = nn.functional
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask)
    s_out = student(input_ids=ids, attention_mask=mask)
    m = mask.float()
    if _is_causal(student):
        t, s = t_out.logits[:, :-1].float(), s_out.logits[:, :-1].float()
        m = m[:, 1:]
        T = cfg.temperature
        kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                      reduction="none").sum(-1) * T * T
        ce = F.cross_entropy(s.transpose(1, 2), ids[:, 1:], reduction="none")
        per_token = cfg.alpha * kl + (1 - cfg.alpha) * ce
    else:
        per_token = (s_out.last_hidden_state.float() - t_out.last_hidden_state.float()).pow(2).mean(-1)
    return (per_token * m).sum() / m.sum().clamp(min=1)


def distil(student: nn.Module, teacher: nn.Module, tokenizer: Any, texts: Sequence[str], cfg: DistilConfig,
           progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train ``student`` in place to imitate ``teacher`` on ``texts``; return the run's record."""
    cfg.validate()
    _check_pair(student, teacher)
    if not texts:
        raise SlimError("no distillation text")
    gen = torch.Generator().manual_seed(cfg.seed)
    frozen = {id(student.get_input_embeddings().weight)} if hasattr(student, "get_input_embeddings") else set()
    for p in student.parameters():
        p.requires_grad_(id(p) not in frozen)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    teacher.eval()
    student.train()
    losses, t0 = [], time.perf_counter()
    try:
        for step in range(cfg.steps):
            idx = torch.randint(len(texts), (cfg.batch_size,), generator=gen).tolist()
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                            max_length=cfg.max_length)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine decay
            for g in opt.param_groups:
                g["lr"] = lr
            loss = _loss(student, teacher, enc["input_ids"], enc["attention_mask"], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if progress:
                progress(step + 1, cfg.steps, losses[-1])
    finally:
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
    return {"steps": cfg.steps, "batch_size": cfg.batch_size, "max_length": cfg.max_length, "lr": cfg.lr,
            "temperature": cfg.temperature, "alpha": cfg.alpha, "trained_parameters": sum(p.numel() for p in params),
            "loss_first": losses[0], "loss_last": sum(losses[-5:]) / len(losses[-5:]),
            "seconds": round(time.perf_counter() - t0, 1)}


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 128,
               batch: int = 8) -> float:
    """Token-level perplexity of a causal LM on ``texts`` (each truncated to ``max_length`` tokens)."""
    F = nn.functional
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(list(texts[i:i + batch]), return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += float(F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    if count == 0:
        raise SlimError("no tokens to measure perplexity on")
    return math.exp(total / count)
