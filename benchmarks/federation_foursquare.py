"""Federated + local personalization vs local-only, per device group, on foursquare_nyc.

Acceptance 4 of issue 5. Both arms run through the simulation runner (fast engine), which
drives federation's `train_round` / `aggregate` / `evaluate_device` and personal/'s training:

- federated: FedAvg of clipped, device-noised adapter updates for R rounds (user-level DP at
  epsilon E, noise calibrated by the runner), then each device fine-tunes the global adapter on
  its own events (that personal adapter never leaves the device);
- local: each device trains its own adapter with DP-SGD at the same epsilon E (record level;
  nothing leaves the device, so it spends no user-level budget at all).

Groups: cold-start devices (<= 20 events) vs the rest, as the runner defines them. The 100
devices are a seeded random draw of the 1,082 users (the top-100 by events has no cold-start user). Prints a
Markdown table (the section pasted into docs/BENCHMARKS.md) and writes JSON next to the runs.

    .venv/bin/python -m benchmarks.federation_foursquare --devices 100 --rounds 3 --epsilon 8
    # or the two arms as separate processes, then the table from their results.json:
    .venv/bin/python -m benchmarks.federation_foursquare --arms local --out DIR
    .venv/bin/python -m benchmarks.federation_foursquare --from-results F/results.json L/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run_arm(mode: str, args: argparse.Namespace) -> dict:
    """One simulation run; returns the runner's results dict."""
    from simulations.runner import SimulationConfig, run_simulation

    cfg = SimulationConfig(dataset="foursquare-nyc", devices=args.devices, sample=not args.top, rounds=args.rounds, epsilon=args.epsilon,
                           model=args.model, engine="fast", mode=mode, out=str(Path(args.out) / mode), seed=args.seed,
                           devices_per_round=args.devices_per_round, max_events=args.max_events,
                           local_epochs=args.local_epochs, personal_epochs=args.personal_epochs,
                           federation_mode=args.federation_mode)
    t0 = time.perf_counter()
    results = run_simulation(cfg, show_progress=True)
    results["bench_wall_s"] = time.perf_counter() - t0
    return results


def table(arms: dict[str, dict], epsilon: float) -> str:
    """Markdown: one row per (group, arm) with top-1/top-5 and the same devices' baselines."""
    lines = ["| group | devices | arm | top-1 | top-5 | global top-1 | Markov top-1 | most-frequent top-1 | epsilon (unit) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({g for r in arms.values() for g in (r.get("groups") or {})})
    for group in groups:
        for arm, res in arms.items():
            g = (res.get("groups") or {}).get(group)
            if not g:
                continue
            unit = "user" if arm == "federated" else "record"
            eps = (res.get("final") or {}).get("epsilon_max")
            glob = "-" if g.get("global_top1") is None else f"{g['global_top1']:.3f}"
            lines.append(f"| {group} | {g['devices']} | {arm} | {g['top1']:.3f} | {g['top5']:.3f} | {glob} | "
                         f"{g['markov_top1']:.3f} | {g['most_frequent_top1']:.3f} | {eps:.3g} ({unit}, target {epsilon:g}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--devices-per-round", type=int, default=None)
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--personal-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--federation-mode", default="device", choices=("device", "secagg", "central"),
                        help="device: each device adds sigma*C (mode a, what docs/BENCHMARKS.md reports)")
    parser.add_argument("--top", action="store_true",
                        help="take the users with the most events (default: a seeded random draw, so cold-start users appear)")
    parser.add_argument("--out", default="out/bench-federation-foursquare")
    parser.add_argument("--arms", default="federated,local", help="which arms to run (comma-separated)")
    parser.add_argument("--from-results", nargs=2, metavar=("FEDERATED_JSON", "LOCAL_JSON"),
                        help="print the table from two finished runs' results.json instead of running")
    args = parser.parse_args()
    if args.from_results:
        arms = {arm: json.loads(Path(path).read_text()) for arm, path in zip(("federated", "local"), args.from_results)}
        for arm, res in arms.items():
            res["bench_wall_s"] = res.get("wall_s", float("nan"))
    else:
        arms = {mode: run_arm(mode, args) for mode in args.arms.split(",")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summary = {arm: {k: res.get(k) for k in ("config", "groups", "final", "baselines", "privacy", "bench_wall_s")} for arm, res in arms.items()}
    (Path(args.out) / "federation_foursquare.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table(arms, args.epsilon))
    for arm, res in arms.items():
        final = res.get("final") or {}
        print(f"{arm}: mean top-1 {final.get('top1')}, bytes up per device per round {final.get('bytes_up_per_device')}, "
              f"wall {res['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
