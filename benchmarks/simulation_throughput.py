"""Throughput of the two engines on the same run, and the fast engine's utilisation of the CPU.

Same devices (foursquare-nyc, a seeded random draw), same FederationConfig, minilm-l6 DP-LoRA
(user-level DP, device-side noise): first `--engine fast`, then `--engine flower`, in one process.

- device-rounds per minute = accepted device updates over all rounds / time of the rounds (model
  loading and vault sealing excluded for both; Flower's end-to-end time incl. Ray start is shown too).
- utilisation = achieved training FLOP/s ÷ measured matmul FLOP/s. Achieved: the FLOPs the round
  loop must do, counted analytically from the real token counts (top BERT layer per token:
  12·H² multiply-adds = 24·H² FLOPs for Q,K,V,O and the FFN, plus 4·T·H for attention; training = forward +
  input-gradient backward ≈ 2× forward; prediction = forward; frozen lower layers = 5 forwards,
  once per example), divided by the fast engine's round time. Measured: torch.mm of the same
  shapes ((tokens × 384) @ (384 × 1536)), same thread count, best of 5 runs, measured right
  before and right after the fast engine's run (the larger is used: the machine is shared).

    .venv/bin/python -m benchmarks.simulation_throughput [--devices 10] [--rounds 2] [--max-events 80]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def matmul_flops(threads: int, tokens: int = 16 * 32, hidden: int = 384, inner: int = 1536) -> float:
    """Best-of-5 FLOP/s of (tokens × hidden) @ (hidden × inner) in float32 on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, inner)
    for _ in range(20):
        a @ b
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            a @ b
            n += 1
        best = max(best, 2 * tokens * hidden * inner * n / (time.perf_counter() - t0))
    return best


def work_flops(results: dict, devices, hidden: int = 384, lower_layers: int = 5) -> dict:
    """FLOPs of the round loop, counted from the devices' real token counts and the run's settings."""
    from personal.models import load_base

    tok = load_base("minilm-l6").tokenizer

    def per_example(texts: list[str]) -> float:
        total = 0.0
        for t in texts:
            n = len(tok(t)["input_ids"])
            total += n * (24 * hidden * hidden + 4 * n * hidden)  # 12·H² multiply-adds per token, + attention
        return total

    cfg = results["config"]
    rounds = len(results["rounds"])
    train_f = sum(per_example([e.text for e in d.train]) for d in devices)
    test_f = sum(per_example([e.text for e in d.test]) for d in devices)
    train = 2 * train_f * (cfg["local_epochs"] + cfg["personal_epochs"]) * rounds
    predict = test_f * 2 * rounds  # global and personalised adapters score the held-out events
    encode = (train_f + test_f) * lower_layers
    return {"train": train, "predict": predict, "encode": encode, "total": train + predict + encode}


def main() -> None:
    from simulations.runner import SimulationConfig, run_simulation
    from simulations.populations import load_population, select_devices
    from simulations.devices import prepare_devices

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-events", type=int, default=80)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-throughput")
    args = p.parse_args()
    common = dict(dataset="foursquare-nyc", devices=args.devices, sample=True, rounds=args.rounds, max_events=args.max_events,
                  epsilon=args.epsilon, model="minilm-l6", seed=args.seed, threads=args.threads,
                  predictor="lora", habit_scorer=False)  # the engines' LoRA rounds: what both engines run
    out = {}
    peaks = [matmul_flops(args.threads)]
    for engine in ("fast", "flower"):
        t0 = time.perf_counter()
        res = run_simulation(SimulationConfig(**common, engine=engine, out=str(Path(args.out) / engine)))
        wall = time.perf_counter() - t0
        rounds_s = sum(r["wall_s"] for r in res["rounds"])
        dr = sum(r["accepted"] for r in res["rounds"])  # device rounds whose update the server used
        out[engine] = {"device_rounds": dr, "rounds_s": rounds_s, "device_rounds_per_min": 60 * dr / rounds_s,
                       "end_to_end_s": wall, "final_top1": res["final"]["top1"], "final_global_top1": res["final"]["global_top1"],
                       "epsilon_max": res["final"]["epsilon_max"]}
        if engine == "fast":
            fast_res = res
            peaks.append(matmul_flops(args.threads))
        print(json.dumps({engine: out[engine]}), flush=True)
    pop = select_devices(load_population("foursquare-nyc"), args.devices, sample=True, seed=args.seed)
    devices = prepare_devices(pop, Path(args.out) / "count-vaults", max_events=args.max_events)
    flops = work_flops(fast_res, devices)
    peak = max(peaks)
    achieved = flops["total"] / out["fast"]["rounds_s"]
    print(json.dumps({"flops": flops, "achieved_flops_per_s": achieved, "matmul_flops_per_s": peaks}))
    ratio = out["fast"]["device_rounds_per_min"] / out["flower"]["device_rounds_per_min"]
    print()
    print(f"foursquare-nyc, {args.devices} devices (seeded random draw, last {args.max_events} events each), "
          f"{args.rounds} rounds, minilm-l6 DP-LoRA, user-level ε={args.epsilon:g}, {args.threads} torch thread(s)")
    print()
    print("| engine | device-rounds | round time s | device-rounds/min | end-to-end s | final top-1 | final global top-1 |")
    print("|---|---|---|---|---|---|---|")
    for engine, r in out.items():
        print(f"| {engine} | {r['device_rounds']} | {r['rounds_s']:.1f} | {r['device_rounds_per_min']:.1f} | "
              f"{r['end_to_end_s']:.1f} | {r['final_top1']:.3f} | {r['final_global_top1']:.3f} |")
    print()
    print(f"fast / flower throughput: {ratio:.1f}x")
    print(f"utilisation: {achieved / 1e9:.2f} GFLOP/s achieved (train {flops['train'] / 1e9:.0f} + predict "
          f"{flops['predict'] / 1e9:.0f} + frozen-layer encode {flops['encode'] / 1e9:.0f} GFLOP in "
          f"{out['fast']['rounds_s']:.1f} s) ÷ {peak / 1e9:.2f} GFLOP/s measured matmul = {achieved / peak:.0%}")


if __name__ == "__main__":
    main()
