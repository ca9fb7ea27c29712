"""foursquare-nyc: base, local-only and federated + local personalization at ε 1/3/8 and non-private.

All runs use the same devices (the N users with the most check-ins, last `--max-events` each)
and the same minilm-l6 base; one process shares one frozen-feature cache across its runs.
Rows: most-frequent and Markov baselines; the base without adapter (zero-shot: cosine of context
and label-name embeddings); local-only DP-SGD (record-level ε); federated + local (user-level ε).

Each configuration writes OUT/<mode>-<ε>/results.json and is skipped when that file is already
complete, so the modes can run as separate processes (one per core) and the table is printed
from whatever has finished:

    .venv/bin/python -m benchmarks.simulation_foursquare --devices 1082 --modes local --out runs/fsq-1082
    .venv/bin/python -m benchmarks.simulation_foursquare --devices 1082 --modes federated --out runs/fsq-1082
    .venv/bin/python -m benchmarks.simulation_foursquare --devices 1082 --table --out runs/fsq-1082
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def zero_shot(devices, labels) -> dict:
    """The base without any adapter, macro-averaged over devices."""
    from federation.device import lora_settings, shared_base
    from personal.evaluate import topk, zero_shot_rankings
    from personal.training import wrap
    from simulations.engine_fast import federation_config
    from simulations.runner import SimulationConfig

    base = shared_base("minilm-l6")
    pm = wrap(base, lora_settings(federation_config(SimulationConfig(), len(devices))))
    pm.clear(labels)
    scores = []
    for d in devices:
        test = [e for e in d.test if e.label is not None]
        scores.append(topk(zero_shot_rankings(pm, [e.text for e in test], labels), [e.label for e in test]))
    return {k: statistics.fmean(s[k] for s in scores) for k in ("top1", "top5")}


def run_dir(out: Path, mode: str, eps: float | None) -> Path:
    return out / f"{mode}-{'np' if eps is None else f'{eps:g}'}"


def run_configs(args: argparse.Namespace, out: Path) -> None:
    """Run every (mode, ε) not already complete in OUT; print one JSON line per finished run."""
    from simulations.devices import FeatureCache
    from simulations.runner import SimulationConfig, finished_results, run_simulation

    cache = FeatureCache(out / f".feature-cache-{os.getpid()}", mem_bytes=1 << 30)
    common = dict(dataset="foursquare-nyc", devices=args.devices, max_events=args.max_events, model="minilm-l6",
                  threads=args.threads, personal_epochs=args.personal_epochs, predictor="combined")
    try:
        for mode in args.modes:
            for eps in [*args.epsilons, None]:
                where = run_dir(out, mode, eps)
                if finished_results(where) is not None:
                    print(f"{where}: complete, skipped", flush=True)
                    continue
                per_mode = (dict(rounds=args.rounds, devices_per_round=args.devices_per_round, evaluate_all=True)
                            if mode == "federated" else dict(rounds=args.local_rounds))
                kw = dict(common, **per_mode, mode=mode, **({"non_private": True} if eps is None else {"epsilon": eps}))
                t0 = time.perf_counter()
                res = run_simulation(SimulationConfig(**kw, out=str(where)), show_progress=True, feature_cache=cache)
                print(json.dumps({"run": str(where), "top1": res["final"]["top1"], "wall_s": time.perf_counter() - t0}), flush=True)
    finally:
        cache.clear_files()


def print_table(args: argparse.Namespace, out: Path) -> None:
    """Zero-shot row (computed here) and one row per finished run, as Markdown."""
    from simulations.devices import prepare_devices
    from simulations.populations import load_population, select_devices
    from simulations.runner import RESULTS_FILE, load_results

    runs = []
    for mode in ("local", "federated"):
        for eps in [*args.epsilons, None]:
            path = run_dir(out, mode, eps) / RESULTS_FILE
            if path.exists():
                runs.append((mode, eps, load_results(path)))
    if not runs:
        raise SystemExit(f"no results under {out}: run the modes first")
    pop = select_devices(load_population("foursquare-nyc"), args.devices)
    devices = prepare_devices(pop, out / "zero-shot-vaults", max_events=args.max_events)
    zs = zero_shot(devices, pop.labels())
    base = runs[0][2]["baselines"]
    print(f"foursquare-nyc, {len(devices)} users (all with >= 2 check-ins), last {args.max_events} events each "
          f"(last 20% held out), minilm-l6 + LoRA (top layer) + head; macro mean over all devices")
    print()
    print("| model | privacy | rounds | top-1 | top-5 | global adapter top-1 | cold-start top-1 | rest top-1 | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| most frequent (baseline) | – | | {base['most_frequent_top1']:.3f} | {base['most_frequent_top5']:.3f} | | | | |")
    print(f"| per-user Markov (baseline) | – | | {base['markov_top1']:.3f} | {base['markov_top5']:.3f} | | | | |")
    print(f"| base without adapter (zero-shot) | – | | {zs['top1']:.3f} | {zs['top5']:.3f} | | | | |")
    for mode, eps, res in runs:
        c, final, groups = res["config"], res["final"], res.get("groups", {})
        name = "local only" if mode == "local" else "federated + local"
        priv = "NON-PRIVATE" if eps is None else f"ε={eps:g} {c['epsilon_unit']}-level (spent max {final['epsilon_max']:.2f})"
        rounds = f"{c['rounds']}" + (f" × {c['devices_per_round']} devices" if c.get("devices_per_round") else "")
        if res.get("status") != "complete":
            rounds += f" ({res.get('status')})"
        glob = f"{final['global_top1']:.3f}" if final.get("global_top1") is not None else ""
        cold, rest = (_cell(groups.get(g, {}).get("top1")) for g in ("cold-start", "rest"))
        print(f"| {name} | {priv} | {rounds} | {final['top1']:.3f} | {final['top5']:.3f} | {glob} | {cold} | "
              f"{rest} | {res.get('wall_s', float('nan')):.0f} |")


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2, help="federated rounds")
    p.add_argument("--devices-per-round", type=int, default=None, help="federated cohort size (default: all)")
    p.add_argument("--local-rounds", type=int, default=None, help="local-only DP-SGD passes (default: --rounds)")
    p.add_argument("--max-events", type=int, default=60)
    p.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0],
                   help="private runs' targets (the non-private run is always added; give none to run only it)")
    p.add_argument("--modes", nargs="+", default=["local", "federated"])
    p.add_argument("--personal-epochs", type=int, default=1, help="local fine-tuning passes on top of the global adapter")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="only print the table from the finished runs in --out")
    p.add_argument("--out", default="runs/bench-foursquare")
    args = p.parse_args()
    args.local_rounds = args.local_rounds or args.rounds
    out = Path(args.out)
    if not args.table:
        run_configs(args, out)
    print_table(args, out)


if __name__ == "__main__":
    main()
