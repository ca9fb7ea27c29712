"""Synthetic population with planted routines: does personalization recover them (vs Markov)?

Runs `homebody simulate --dataset synthetic` configurations through the library (same code as the
CLI) and prints a markdown table of top-1 on the held-out events, split by what produced them:
weekly routines (gym on fixed weekdays, a weekly call, ...), the daily schedule, unplanned noise.

    .venv/bin/python -m benchmarks.simulation_synthetic [--devices 12] [--rounds 2] [--out runs/bench-synthetic]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def configs(args) -> list[tuple[str, dict]]:
    """The compared runs: federated + local personalization (DP user-level), local-only DP and non-private."""
    common = dict(dataset="synthetic", synthetic_devices=args.devices, devices=args.devices, max_events=args.max_events,
                  model=args.model, seed=args.seed, threads=args.threads, predictor="combined")
    return [
        (f"federated + local, user-level ε={args.epsilon:g}", dict(common, mode="federated", rounds=args.rounds,
                                                                  epsilon=args.epsilon, personal_epochs=3)),
        (f"local only, DP-SGD record-level ε={args.epsilon:g}", dict(common, mode="local", rounds=args.rounds + 1,
                                                                    epsilon=args.epsilon)),
        ("local only, NON-PRIVATE", dict(common, mode="local", rounds=args.rounds + 1, non_private=True)),
    ]


def main() -> None:
    from simulations.runner import SimulationConfig, run_simulation

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-events", type=int, default=250)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-synthetic")
    args = p.parse_args()
    rows = []
    for i, (name, kwargs) in enumerate(configs(args)):
        t0 = time.perf_counter()
        res = run_simulation(SimulationConfig(**kwargs, out=str(Path(args.out) / f"run{i}-{kwargs['mode']}")))
        planted = res["planted"]
        rows.append({"run": name, "wall_s": time.perf_counter() - t0, "top1": res["final"]["top1"],
                     "markov_top1": res["baselines"]["markov_top1"], "most_frequent_top1": res["baselines"]["most_frequent_top1"],
                     "epsilon_max": res["final"]["epsilon_max"], "unit": res["config"]["epsilon_unit"], **{
                         f"{k}_{m}": v[m] for k, v in planted.items() for m in ("events", "personalized_top1", "markov_top1")}})
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"synthetic: {args.devices} owners (seed {args.seed}), last {args.max_events} events each, {args.model}; "
          "top-1 on held-out events, macro mean over devices (all) / pooled over events (by kind)")
    print()
    print("| run | ε spent (max) | top-1 all | Markov all | weekly routines: model / Markov (n) | daily schedule: model / Markov (n) | unplanned: model / Markov (n) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "∞ (non-private)" if r["epsilon_max"] == float("inf") else f"{r['epsilon_max']:.2f} ({r['unit']})"
        cells = [f"{r[f'{k}_personalized_top1']:.3f} / {r[f'{k}_markov_top1']:.3f} ({r[f'{k}_events']})"
                 for k in ("weekly_routines", "daily_schedule", "unplanned")]
        print(f"| {r['run']} | {eps} | {r['top1']:.3f} | {r['markov_top1']:.3f} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
