"""Federated + local personalization vs local-only, per device group, on foursquare_nyc.

Acceptance 4 of issue 5. Every arm runs through the simulation runner (fast engine), which
drives federation's `train_round` / `aggregate` / `evaluate_device` and personal/'s training:

- federated-device / federated-secagg: FedAvg of clipped, noised adapter updates for R rounds
  (user-level DP at epsilon E, noise calibrated by the runner; "device" = each device adds the
  full sigma*C, mode (a); "secagg" = the cohort's devices share it, mode (b)), then each device
  fine-tunes the global adapter on its own events (that personal adapter never leaves the device);
- local: each device trains its own adapter with DP-SGD at the same epsilon E (record level;
  nothing leaves the device, so it spends no user-level budget at all);
- local-nonprivate: the same without DP (nothing leaves the device either).

Groups: cold-start devices (<= 20 events) vs the rest, as the runner defines them. The devices
are a seeded random draw of the 1,082 users that contains `--cold-start` cold-start users (a
plain draw of 100 holds about 6). Prints a Markdown table (the section in docs/BENCHMARKS.md)
and writes JSON next to the runs. Arms already complete in --out are read back, not re-run.

    .venv/bin/python -m benchmarks.federation_foursquare --devices 100 --cold-start 30 --rounds 3 --epsilon 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


ARMS = {
    "federated-device": dict(mode="federated", federation_mode="device"),
    "federated-secagg": dict(mode="federated", federation_mode="secagg"),
    "local": dict(mode="local"),
    "local-nonprivate": dict(mode="local", non_private=True),
}


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """One simulation run (or its finished results.json); returns the runner's results dict."""
    from simulations.runner import SimulationConfig, finished_results, run_simulation

    out = Path(args.out) / arm
    done = finished_results(out)
    if done is not None:
        return done
    cfg = SimulationConfig(dataset="foursquare-nyc", devices=args.devices, sample=True, cold_start_devices=args.cold_start,
                           rounds=args.rounds, epsilon=args.epsilon, model=args.model, engine="fast", out=str(out),
                           seed=args.seed, devices_per_round=args.devices_per_round, max_events=args.max_events,
                           local_epochs=args.local_epochs, personal_epochs=args.personal_epochs, predictor="combined", **ARMS[arm])
    return run_simulation(cfg, show_progress=True)


def table(arms: dict[str, dict]) -> str:
    """Markdown: one row per (group, arm) with top-1/top-5 and the same devices' baselines."""
    lines = ["| group | devices | arm | top-1 | top-5 | global top-1 | Markov top-1 | most-frequent top-1 | epsilon spent (unit) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({g for r in arms.values() for g in (r.get("groups") or {})})
    for group in groups:
        for arm, res in arms.items():
            g = (res.get("groups") or {}).get(group)
            if not g:
                continue
            priv = res.get("privacy") or {}
            eps = (res.get("final") or {}).get("epsilon_max")
            spent = "∞ (non-private)" if not priv.get("private", True) else f"{eps:.3g} ({priv.get('unit')})"
            glob = "-" if g.get("global_top1") is None else f"{g['global_top1']:.3f}"
            lines.append(f"| {group} | {g['devices']} | {arm} | {g['top1']:.3f} | {g['top5']:.3f} | {glob} | "
                         f"{g['markov_top1']:.3f} | {g['most_frequent_top1']:.3f} | {spent} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--cold-start", type=int, default=30, help="cold-start users guaranteed in the draw")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--devices-per-round", type=int, default=None)
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--personal-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/bench-federation-foursquare")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    args = parser.parse_args()
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; use {', '.join(ARMS)}")
    arms = {arm: run_arm(arm, args) for arm in args.arms.split(",")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summary = {arm: {k: res.get(k) for k in ("config", "groups", "final", "baselines", "privacy", "wall_s")} for arm, res in arms.items()}
    (Path(args.out) / "federation_foursquare.json").write_text(json.dumps(summary, indent=1, default=str))
    print(table(arms))
    for arm, res in arms.items():
        final = res.get("final") or {}
        print(f"{arm}: mean top-1 {final.get('top1'):.3f} over {len(res.get('devices', []))} devices, "
              f"bytes up per device per round {final.get('bytes_up_per_device'):.0f}, wall {res.get('wall_s', float('nan')):.0f} s")


if __name__ == "__main__":
    main()
