"""Issue 9, distillation: a small student from smollm2-135m on Shakespeare, measured against the teacher.

The student is smollm2-135m structurally pruned (--prune of the MLP channels and --prune-layers
whole layers, calibrated on training roles), then distilled from the unpruned teacher on the
training roles (KL at temperature 2 + cross-entropy). Reported: parameters, held-out perplexity
(every 10th role, never trained on) of the teacher, of the student before and after
distillation, and greedy decoding tokens/s of teacher and student measured in this one process,
one after the other.

    .venv/bin/python -m benchmarks.slim_distil [--prune 0.5] [--prune-layers 10] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tokens_per_s(model, tok, new_tokens: int = 32) -> float:
    """Greedy decoding speed, batch 1 (best of two)."""
    import torch

    ids = tok("ROMEO:\nBut soft, what light through yonder window breaks?", return_tensors="pt")["input_ids"]
    best = 0.0
    with torch.no_grad():
        for _ in range(2):
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            best = max(best, (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="teacher (the student is its pruned copy)")
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--prune-layers", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from rich.progress import Progress

    from personal.models import load_base
    from personal.slim.distil import DistilConfig, distil, perplexity
    from personal.slim.prune import PruneConfig, prune_model
    from personal.slim.texts import HELDOUT, TRAIN, load_texts
    from simulations.datasets import data_root

    torch.set_num_threads(args.threads)
    train = load_texts("shakespeare_roles", TRAIN, root=data_root())
    held = load_texts("shakespeare_roles", HELDOUT, limit=args.heldout, root=data_root())
    teacher = load_base(args.model)
    student = load_base(args.model)
    tok = teacher.tokenizer
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    row = {"teacher_params": n_params(teacher.model), "teacher_ppl": perplexity(teacher.model, tok, held),
           "teacher_tokens_per_s": tokens_per_s(teacher.model, tok)}
    pruned = prune_model(student.model, PruneConfig(mlp=args.prune, layers=args.prune_layers), tok, train[:64])
    row.update(student_params=n_params(student.model), dropped_layers=pruned["dropped_layers"],
               intermediate_size=pruned["intermediate_size"], student_ppl_before=perplexity(student.model, tok, held))
    with Progress() as bar:
        task = bar.add_task("distilling", total=args.steps)
        record = distil(student.model, teacher.model, tok, train,
                        DistilConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr),
                        progress=lambda i, n, loss: bar.update(task, completed=i))
    row.update(distil=record, student_ppl_after=perplexity(student.model, tok, held),
               student_tokens_per_s=tokens_per_s(student.model, tok))
    print(f"{args.model} -> pruned student (MLP -{args.prune:.0%}, {args.prune_layers} layers dropped), distilled "
          f"{args.steps} steps x {args.batch_size} x {args.max_length} tokens on Shakespeare training roles "
          f"({record['seconds']:.0f} s); perplexity on {args.heldout} held-out role chunks; {args.threads} threads\n")
    print("| model | parameters | held-out perplexity | tokens/s |")
    print("|---|---|---|---|")
    print(f"| teacher {args.model} | {row['teacher_params'] / 1e6:.1f} M | {row['teacher_ppl']:.2f} | {row['teacher_tokens_per_s']:.2f} |")
    print(f"| student, pruned only | {row['student_params'] / 1e6:.1f} M | {row['student_ppl_before']:.2f} | - |")
    print(f"| student, pruned + distilled | {row['student_params'] / 1e6:.1f} M | {row['student_ppl_after']:.2f} | "
          f"{row['student_tokens_per_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
