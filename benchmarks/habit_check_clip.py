"""How the usefulness check's bound (federation.habit_check.CHECK_CLIP) was chosen: on TRAINING-event tails only.

For one population, the habit scorer is learnt exactly as `homebody simulate` learns it
(simulations.habit_sim.train_scorer: DP-FedAvg at the run's user-level epsilon, then the check);
then every device's `tail_gain` (the scorer's top-1 minus its own best counting's on the last 20% of
its TRAINING events) is computed, and for each candidate bound the clipped sum is printed next to the
check's noise standard deviation (noise multiplier x bound) and the margin (sum - 3 std) / std.
Held-out events are never read. The chosen bound is the largest whose margin is at least 3 on every
population looked at (docs/BENCHMARKS.md).

    .venv/bin/python -m benchmarks.habit_check_clip --dataset synthetic --devices 50 --max-events 200 --epsilons 8
    HOMEBODY_DATA=/work/shared/data .venv/bin/python -m benchmarks.habit_check_clip --dataset foursquare-nyc \\
        --devices 1082 --max-events 100 --epsilons 1 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

BOUNDS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0)


def tail_gains(dataset: str, devices: int, max_events: int, epsilon: float, data_dir: str | None) -> tuple[np.ndarray, float, dict]:
    """(every device's tail gain, the check's noise multiplier, the check's verdict) for one scorer run."""
    from personal.habit_predictor import tail_gain
    from simulations.devices import prepare_devices
    from simulations.habit_sim import scorer_plan, train_scorer
    from simulations.populations import load_population, select_devices
    from simulations.runner import SimulationConfig

    cfg = SimulationConfig(dataset=dataset, synthetic_devices=devices, devices=devices, model="tiny", max_events=max_events,
                           epsilon=epsilon, predictor="habit", data_dir=data_dir)
    pop = select_devices(load_population(dataset, data_dir=data_dir, synthetic_devices=devices, seed=cfg.seed), devices)
    sims = prepare_devices(pop, Path(tempfile.mkdtemp(prefix="habit-check-clip-")) / "vaults", max_events=max_events)
    plan = scorer_plan(cfg, len(sims), f"clip-{epsilon:g}")
    outcome = train_scorer(cfg, plan, sims, pop.labels())
    gains = np.array([tail_gain(d.habit_train, pop.labels(), outcome.weights) for d in sims])
    return gains, plan.check_config.noise_multiplier, outcome.check.to_json()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--max-events", type=int, default=200)
    p.add_argument("--epsilons", type=float, nargs="+", default=[8.0])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    for eps in args.epsilons:
        t0 = time.perf_counter()
        g, sigma, check = tail_gains(args.dataset, args.devices, args.max_events, eps, args.data_dir)
        print(f"{args.dataset}, {len(g)} devices, user-level epsilon {eps:g}: mean tail gain {g.mean():+.4f}, "
              f"better on {np.mean(g > 0):.0%}, worse on {np.mean(g < 0):.0%}; check noise multiplier {sigma:.3f}; "
              f"verdict with the current bound: {check} ({time.perf_counter() - t0:.0f} s)")
        for c in BOUNDS:
            s, std = float(np.clip(g, -c, c).sum()), sigma * c
            print(f"  bound {c:<4g}: clipped sum {s:7.2f}, noise std {std:6.2f}, margin (sum - 3 std) / std {(s - 3 * std) / std:7.2f}")


if __name__ == "__main__":
    main()
