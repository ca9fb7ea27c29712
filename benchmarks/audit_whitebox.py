"""White-box one-run audit of local DP-SGD (issue 17): correct runs at claimed epsilon 1/4/8, and
runs with a planted bug (halved noise, noise off, doubled sampling rate) that still claim epsilon 4.

    .venv/bin/python -m benchmarks.audit_whitebox [--correct-seeds 7] [--bug-seeds 10] [--json FILE]
    .venv/bin/python -m benchmarks.audit_whitebox --federated [--fed-seeds 3] [--fed-canaries 500]

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
    ap.add_argument("--federated", action="store_true", help="Run the federated canary-client benchmark instead.")
    ap.add_argument("--fed-seeds", type=int, default=3)
    ap.add_argument("--fed-canaries", type=int, default=500)
    args = ap.parse_args()
    if args.federated:
        federated_main(args.fed_seeds, args.fed_canaries)
        return
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



# -- federated canary clients (issue 17, acceptances 3 and 4) -------------------------------------

def _simulate(tmp: str, eps: float, seed: int, canaries: int, half_noise: bool = False) -> dict:
    """One synthetic federated simulation (tiny base, secagg noise, every device every round)."""
    from simulations import engine_fast
    from simulations.runner import SimulationConfig, run_simulation

    cfg = SimulationConfig(dataset="synthetic", synthetic_devices=10, devices=10, rounds=5, model="tiny",
                           epsilon=eps, seed=seed, audit_canaries=canaries, predictor="lora", out=f"{tmp}/e{eps:g}-s{seed}-k{canaries}-h{int(half_noise)}")
    original = engine_fast.calibrated_noise
    if half_noise:  # BENCHMARK-ONLY planted bug: the noise is half what the claimed epsilon needs
        engine_fast.calibrated_noise = lambda *a: original(*a) * 0.5
    try:
        return run_simulation(cfg)
    finally:
        engine_fast.calibrated_noise = original


def federated_main(seeds: int, canaries: int) -> None:
    """Canary estimates at claimed user-level epsilon 1/4/8, a halved-noise run, and the cost of 8 canaries."""
    import tempfile

    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(eps, s, canaries, False) for eps in (1.0, 4.0, 8.0) for s in range(seeds)]
        plan += [(4.0, s, canaries, True) for s in range(seeds)]
        plan += [(4.0, s, k, False) for s in range(seeds) for k in (0, 8)]
        for eps, s, k, half in plan:
            res = _simulate(tmp, eps, s, k, half)
            est = res.get("canary_audit") or {}
            it, fm = est.get("all_iterates", {}), est.get("final_model", {})
            row = dict(eps=eps, seed=s, k=k, half=half, wall=res["wall_s"], rounds_s=res["timing"]["rounds_s"],
                       top1=res["final"]["top1"], gtop1=res["final"]["global_top1"],
                       it=it.get("epsilon"), it_low=it.get("epsilon_lower"), fm=fm.get("epsilon"),
                       flagged=est.get("flagged"), z=res["privacy"]["noise_multiplier"])
            rows.append(row)
            print(f"# {row}", flush=True)
    print()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, total "
          f"{time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}. Synthetic, 10 devices (all in "
          f"every round), 5 rounds, tiny base, secagg noise, delta 1e-5; 1000 unobserved canary directions.")
    print()
    print("| run | claimed user ε | seed | canaries | noise multiplier | all-iterates ε (lower limit) | final-model ε | "
          "flagged | global top-1 | personal top-1 | rounds s |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        name = "halved noise (benchmark-only bug)" if r["half"] else ("no canaries" if r["k"] == 0 else "correct")
        est = "—" if r["it"] is None else f"{_num(r['it'])} ({_num(r['it_low'])})"
        print(f"| {name} | {r['eps']:g} | {r['seed']} | {r['k']} | {r['z']:.3f} | {est} | "
              f"{'—' if r['fm'] is None else _num(r['fm'])} | {'—' if r['flagged'] is None else ('**yes**' if r['flagged'] else 'no')} | "
              f"{r['gtop1']:.3f} | {r['top1']:.3f} | {r['rounds_s']:.1f} |")


def _num(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


if __name__ == "__main__":
    main()
