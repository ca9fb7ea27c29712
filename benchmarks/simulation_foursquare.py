"""foursquare-nyc: base, local-only and federated + local personalization at ε 1/3/8 and non-private.

All runs use the same devices (the N users with the most check-ins, last `--max-events` each),
the same shared minilm-l6 base and one shared frozen-feature cache (computed once). Rows:
most-frequent and Markov baselines; the base without adapter (zero-shot: cosine of context and
label-name embeddings); local-only DP-SGD (record-level ε); federated + local (user-level ε).

    .venv/bin/python -m benchmarks.simulation_foursquare [--devices 50] [--rounds 2] [--max-events 60]
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    from simulations.devices import FeatureCache, prepare_devices
    from simulations.populations import load_population, select_devices
    from simulations.runner import SimulationConfig, run_simulation

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-events", type=int, default=60)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--modes", nargs="+", default=["local", "federated"])
    p.add_argument("--personal-epochs", type=int, default=1, help="local fine-tuning passes on top of the global adapter")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-foursquare")
    args = p.parse_args()
    out = Path(args.out)
    cache = FeatureCache(out / ".shared-feature-cache", mem_bytes=1 << 30)
    common = dict(dataset="foursquare-nyc", devices=args.devices, rounds=args.rounds, max_events=args.max_events,
                  model="minilm-l6", threads=args.threads, personal_epochs=args.personal_epochs)
    rows, baselines = [], None
    for mode in args.modes:
        for eps in [*args.epsilons, None]:
            kw = dict(common, mode=mode, **({"non_private": True} if eps is None else {"epsilon": eps}))
            t0 = time.perf_counter()
            res = run_simulation(SimulationConfig(**kw, out=str(out / f"{mode}-{eps or 'np'}")), feature_cache=cache)
            baselines = res["baselines"]
            groups = res.get("groups", {})
            row = {"mode": mode, "epsilon_target": eps, "unit": res["config"]["epsilon_unit"],
                   "epsilon_max": res["final"]["epsilon_max"], "top1": res["final"]["top1"], "top5": res["final"]["top5"],
                   "global_top1": res["final"].get("global_top1"), "wall_s": time.perf_counter() - t0,
                   "cold_top1": groups.get("cold-start", {}).get("top1"), "rest_top1": groups.get("rest", {}).get("top1")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    pop = select_devices(load_population("foursquare-nyc"), args.devices)
    devices = prepare_devices(pop, out / "zero-shot-vaults", max_events=args.max_events)
    zs = zero_shot(devices, pop.labels())
    cache.clear_files()
    print()
    print(f"foursquare-nyc, top {args.devices} users by check-ins, last {args.max_events} events each (last 20% held out), "
          f"{args.rounds} rounds, {args.personal_epochs} personal epoch(s), minilm-l6 + LoRA (top layer) + head; macro mean over devices")
    print()
    print("| model | privacy | top-1 | top-5 | global adapter top-1 | wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| most frequent (baseline) | – | {baselines['most_frequent_top1']:.3f} | {baselines['most_frequent_top5']:.3f} | | |")
    print(f"| per-user Markov (baseline) | – | {baselines['markov_top1']:.3f} | {baselines['markov_top5']:.3f} | | |")
    print(f"| base without adapter (zero-shot) | – | {zs['top1']:.3f} | {zs['top5']:.3f} | | |")
    for r in rows:
        name = "local only" if r["mode"] == "local" else "federated + local"
        if r["epsilon_target"] is None:
            priv = "NON-PRIVATE"
        else:
            priv = f"ε={r['epsilon_target']:g} {r['unit']}-level (spent max {r['epsilon_max']:.2f})"
        g = f"{r['global_top1']:.3f}" if r["global_top1"] is not None else ""
        print(f"| {name} | {priv} | {r['top1']:.3f} | {r['top5']:.3f} | {g} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
