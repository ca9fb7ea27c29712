"""Scaling of the fast engine with the population size: wall time and peak RSS per run.

Each size runs in its own process (`homebody simulate` through the library; peak RSS is that
process's own `ru_maxrss`): foursquare-nyc, the N users with the most check-ins, every device
sealed in its own vault, `--rounds` rounds of `--devices-per-round` sampled devices (a fixed
cohort, so the round work is the same and the population's own cost shows), minilm-l6 DP-LoRA.

    .venv/bin/python -m benchmarks.simulation_scaling [--sizes 100 300 1082] [--devices-per-round 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, resource, sys, time
from simulations.runner import SimulationConfig, run_simulation
kw = json.loads(sys.argv[1])
t0 = time.perf_counter()
res = run_simulation(SimulationConfig(**kw))
print("RESULT " + json.dumps({"wall_s": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "devices": res["population"]["devices"], "events": res["population"]["events"], "setup_s": res["timing"]["setup_s"],
      "rounds_s": res["timing"]["rounds_s"], "device_rounds": res["timing"]["device_rounds"], "status": res["status"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1082])
    p.add_argument("--devices-per-round", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--max-events", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-scaling")
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        kw = dict(dataset="foursquare-nyc", devices=n, rounds=args.rounds, devices_per_round=args.devices_per_round,
                  max_events=args.max_events, model="minilm-l6", epsilon=8.0, threads=args.threads, predictor="combined",
                  out=f"{args.out}/n{n}")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {n} failed (exit {proc.returncode})")
        row = json.loads(line[0][7:]) | {"n": n, "process_s": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"foursquare-nyc, top-N users, last {args.max_events} events each, {args.rounds} round(s) of "
          f"{args.devices_per_round} sampled devices, minilm-l6 DP-LoRA (ε=8 user-level), {args.threads} thread(s)")
    print()
    print("| devices | events | setup s (load, baselines, seal vaults) | rounds s | process wall s | peak RSS MB | RSS vs first |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['events']} | {r['setup_s']:.1f} | {r['rounds_s']:.1f} | {r['process_s']:.1f} | "
              f"{r['rss_mb']:.0f} | {r['rss_mb'] / rows[0]['rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
