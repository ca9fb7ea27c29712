"""Empirical one-run privacy audit (acceptance 4): the same opacus DP-SGD training with the noise
switched off and with noise calibrated to epsilon = 1, over a few seeds.

    .venv/bin/python -m benchmarks.privacy_empirical [--seeds 3] [--canaries 1000] [--json FILE]

Prints a Markdown table for docs/BENCHMARKS.md (## Privacy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone

from simulations.empirical_audit import EmpiricalAuditConfig, run_empirical_audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--json", default=None, help="Write every run's full result here.")
    args = ap.parse_args()
    runs = [
        ("noise off, claimed epsilon 1 (a bug that drops the noise)", dict(epsilon=1.0, noise=False)),
        ("DP-SGD calibrated to epsilon 1", dict(epsilon=1.0, noise=True)),
        ("DP-SGD calibrated to epsilon 4", dict(epsilon=4.0, noise=True)),
    ]
    t0 = time.perf_counter()
    results = []
    for name, kw in runs:
        for seed in range(args.seeds):
            cfg = EmpiricalAuditConfig(canaries=args.canaries, seed=seed, **kw)
            rep = run_empirical_audit(cfg)
            results.append((name, rep))
            print(f"# {name} seed {seed}: lower bound {rep.epsilon_lower:.3f}, accountant "
                  f"{rep.accountant_epsilon}, {rep.correct}/{rep.guesses} right, {rep.seconds:.1f} s", flush=True)
    cfg0 = EmpiricalAuditConfig(canaries=args.canaries)
    print()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"total {time.perf_counter() - t0:.0f} s. m = {cfg0.canaries} canaries (random inputs, random labels) each "
          f"included with probability 1/2 among {cfg0.examples} ordinary examples; MLP {cfg0.dim}-{cfg0.hidden}-"
          f"{cfg0.classes}, {cfg0.epochs} epochs, expected batch {cfg0.batch_size}, lr {cfg0.lr}, clip "
          f"{cfg0.max_grad_norm}, delta {cfg0.delta:g}; membership scored by loss; bound at "
          f"{cfg0.confidence:.0%} confidence (Bonferroni over 10 guess counts).")
    print()
    print("| run | seed | noise multiplier | accountant ε | empirical lower bound ε | right / guesses | "
          "mean canary loss in / out | held-out accuracy | verdict | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, r in results:
        acc = "∞" if r.accountant_epsilon is None else f"{r.accountant_epsilon:.3f}"
        verdict = "**claim fails**" if r.claim_fails else "consistent"
        print(f"| {name} | {r.config['seed']} | {r.noise_multiplier:.3f} | {acc} | {r.epsilon_lower:.3f} | "
              f"{r.correct} / {r.guesses} | {r.member_loss:.3f} / {r.nonmember_loss:.3f} | {r.test_accuracy:.3f} | "
              f"{verdict} | {r.seconds:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{"run": n, **asdict(r)} for n, r in results], fh, indent=2)


if __name__ == "__main__":
    main()
