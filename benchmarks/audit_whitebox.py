"""White-box one-run audit of local DP-SGD (issue 17): correct runs at claimed epsilon 1/4/8, and
runs with a planted bug (halved noise, noise off, doubled sampling rate) that still claim epsilon 4.

    .venv/bin/python -m benchmarks.audit_whitebox [--correct-seeds 7] [--bug-seeds 10] [--json FILE]

Every run is the real local DP-SGD (personal.training.train_adapter, opacus) on the tiny base with
Dirac gradient canaries (personal/audit_hook.py); the bugs come from the test-only injector.
Prints a summary and a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone

from personal.audit_hook import InjectedBug
from simulations.empirical_audit import WhiteBoxAuditConfig, run_whitebox_audit, _json_safe


def _plan(correct_seeds: int, bug_seeds: int) -> list[tuple[str, float, int, InjectedBug | None]]:
    """(group, claimed epsilon, seed, bug) for every run."""
    runs: list[tuple[str, float, int, InjectedBug | None]] = []
    for eps, n in ((4.0, correct_seeds), (1.0, correct_seeds), (8.0, correct_seeds - 1)):
        runs += [(f"correct, epsilon {eps:g}", eps, s, None) for s in range(n)]
    runs += [("halved noise, claims 4", 4.0, s, InjectedBug(noise_scale=0.5)) for s in range(bug_seeds)]
    runs += [("noise off, claims 4", 4.0, s, InjectedBug(noise_scale=0.0)) for s in range(bug_seeds)]
    runs += [("doubled sample rate, claims 4", 4.0, s, InjectedBug(sample_rate_scale=2.0))
             for s in range(max(1, bug_seeds // 2))]
    return runs


def _summary(results) -> list[str]:
    lines = []
    groups: dict[str, list] = {}
    for name, rep in results:
        groups.setdefault(name, []).append(rep)
    for name, reps in groups.items():
        snj = [r.epsilon_lower for r in reps]
        gl = [r.gaussian_epsilon_lower for r in reps]
        claim = reps[0].claimed_epsilon
        lines.append(
            f"- {name}: {len(reps)} seeds; SNJ bound {min(snj):.2f}–{max(snj):.2f} (>= 0.45 x claim in "
            f"{sum(s >= 0.45 * claim for s in snj)}); Gaussian lower limit {min(gl):.2f}–{max(gl):.2f}; "
            f"SNJ above claim in {sum(s > claim for s in snj)}; flagged in {sum(r.flagged for r in reps)}; "
            f"{min(r.seconds for r in reps):.1f}–{max(r.seconds for r in reps):.1f} s per audit")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--correct-seeds", type=int, default=7, help="seeds per epsilon for correct runs (8: one fewer)")
    ap.add_argument("--bug-seeds", type=int, default=10)
    ap.add_argument("--canaries", type=int, default=WhiteBoxAuditConfig.canaries)
    ap.add_argument("--json", default=None, help="Write every run's full result here.")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = []
    for name, eps, seed, bug in _plan(args.correct_seeds, args.bug_seeds):
        rep = run_whitebox_audit(WhiteBoxAuditConfig(epsilon=eps, canaries=args.canaries, seed=seed), _test_only_bug=bug)
        results.append((name, rep))
        print(f"# {name} seed {seed}: SNJ {rep.epsilon_lower:.3f} ({rep.correct}/{rep.guesses}), Gaussian "
              f"{rep.gaussian_epsilon:.3f} (>= {rep.gaussian_epsilon_lower:.3f}), flagged {rep.flagged}, "
              f"{rep.seconds:.1f} s", flush=True)
    c = WhiteBoxAuditConfig(canaries=args.canaries)
    print()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"total {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}. Base {c.model}, LoRA rank "
          f"{c.lora_rank}; {c.examples} ordinary examples; sample rate {c.sample_rate}, {c.epochs:g} epochs; clip "
          f"{c.max_grad_norm}; m = {c.canaries} Dirac canaries; delta {c.delta:g}; {c.confidence:.0%} confidence.")
    print()
    print("\n".join(_summary(results)))
    print()
    print("| run | seed | noise multiplier | SNJ lower bound ε | right / guesses | Gaussian μ | Gaussian ε "
          "(lower limit) | flagged | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, r in results:
        print(f"| {name} | {r.config['seed']} | {r.noise_multiplier:.3f} | {r.epsilon_lower:.3f} | {r.correct} / "
              f"{r.guesses} | {r.gaussian_mu:.3f} | {r.gaussian_epsilon:.2f} ({r.gaussian_epsilon_lower:.2f}) | "
              f"{'**yes**' if r.flagged else 'no'} | {r.seconds:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([_json_safe({"run": n, **asdict(r)}) for n, r in results], fh, indent=2)


if __name__ == "__main__":
    main()
