"""Issue 9, acceptance 2: DP-LoRA personalization on the int8 base vs the fp32 base (Foursquare NYC).

Each base runs in a FRESH process (peak RSS is its own): load, then for each of the --users users
with most check-ins (after --skip): chronological split (last 20% held out; the most recent
--max-train training events and the first --max-queries held-out events are used), DP-LoRA
(epsilon --epsilon, delta 1e-5, the same Poisson rate and steps for every user, so one noise
calibration) on the top layer, then top-1/top-5 on the held-out events. The int8 base is
``smollm2-135m:int8`` (slimmed once into the cache before the timed runs). The same code path as
``homebody personalize`` (personal.training.train_adapter) trains both.

    .venv/bin/python -m benchmarks.slim_personalize [--models smollm2-135m,smollm2-135m:int8] [--users 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def child(args: argparse.Namespace) -> dict:
    """One base: personalize every selected user with DP-LoRA and score the held-out events."""
    import numpy as np
    import torch

    from personal.evaluate import baseline_scores, chronological_split, model_rankings, query_texts, topk
    from personal.examples import events_to_examples, label_space
    from personal.models import load_base
    from personal.training import DPConfig, LoraSettings, TrainConfig, plan_mechanism, train_adapter, wrap
    from simulations.populations import foursquare_nyc, select_devices

    torch.set_num_threads(args.threads)
    pop = select_devices(foursquare_nyc(), args.users + args.skip)
    devices = pop.devices[args.skip:]
    t0 = time.perf_counter()
    base = load_base(args.child)
    load_s = time.perf_counter() - t0
    lora = LoraSettings(r=8, alpha=16, layers=(-1,))
    pm = wrap(base, lora)
    cfg = TrainConfig(lora=lora, epochs=args.epochs, sample_rate=args.q, lr=args.lr, max_length=args.max_length)
    dp = DPConfig(epsilon=args.epsilon, delta=1e-5, max_grad_norm=1.0)
    plan = plan_mechanism(1000, cfg, dp)
    scores, markov = [], []
    t1 = time.perf_counter()
    for dev in devices:
        train, queries = chronological_split(dev.events)
        queries = queries[: args.max_queries]
        truths = [q.target.event for q in queries]
        labels = label_space(train)
        examples = events_to_examples(train, history=1)[-args.max_train:]
        res = train_adapter(base, examples, labels, cfg, dp, plan=plan)
        pm.load_adapter(res.adapter)
        scores.append(topk(model_rankings(pm, query_texts(queries, history=1), max_length=args.max_length), truths))
        markov.append(baseline_scores(train, queries)["markov"])
    return {"model": args.child, "identity": base.identity(), "users": len(devices),
            "top1": float(np.mean([s["top1"] for s in scores])), "top5": float(np.mean([s["top5"] for s in scores])),
            "markov_top1": float(np.mean([s["top1"] for s in markov])),
            "per_user_top1": [round(s["top1"], 4) for s in scores],
            "epsilon": plan.epsilon, "noise_multiplier": plan.noise_multiplier, "steps": plan.steps,
            "load_s": round(load_s, 1), "personalize_s": round(time.perf_counter() - t1, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,smollm2-135m:int8")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=150)
    ap.add_argument("--max-queries", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--q", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    models = [m for m in args.models.split(",") if m]
    for m in models:  # slim once, outside the measured processes
        if ":" in m:
            subprocess.run([sys.executable, "-c", f"from personal.models import load_base; load_base({m!r})"], check=True)
    results = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k not in ("models", "json", "child") and v is not None]
    for m in models:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.slim_personalize", "--child", m, *passthrough],
                              check=True, capture_output=True, text=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{m}: {results[-1]}", file=sys.stderr, flush=True)
    ref = results[0]
    print(f"Foursquare NYC, {ref['users']} users with most check-ins (skip {args.skip}), last {args.max_train} training "
          f"events and first {args.max_queries} held-out events per user, DP-LoRA r=8 on the top layer, "
          f"epsilon {ref['epsilon']:.2f} (noise {ref['noise_multiplier']:.3f}, q {args.q}, {ref['steps']} steps, delta 1e-5), "
          f"{args.threads} torch threads\n")
    print("| base | mean top-1 | mean top-5 | top-1 vs first base | Markov top-1 | peak RSS MB | load s | personalize s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['top1']:.3f} | {r['top5']:.3f} | {100 * r['top1'] / ref['top1']:.1f}% | "
              f"{r['markov_top1']:.3f} | {r['peak_rss_mb']} | {r['load_s']} | {r['personalize_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
