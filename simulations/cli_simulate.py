"""`homebody simulate ...`: many devices on one machine (a thin layer over simulations.runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def simulate(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", "--dataset", help="synthetic | foursquare-nyc | shakespeare | events:PATH"),
    devices: Optional[int] = typer.Option(50, "--devices", help="Keep the N devices with the most events (all if larger)."),
    sample: bool = typer.Option(False, "--sample", help="Draw the N devices at random (seeded) instead of the N largest."),
    cold_start: int = typer.Option(0, "--cold-start", help="Include this many cold-start devices (<= 20 events) in the selection."),
    rounds: int = typer.Option(5, "--rounds", help="Federated rounds (local mode: local training passes)."),
    devices_per_round: Optional[int] = typer.Option(None, "--devices-per-round", help="Devices sampled per round (default: all)."),
    evaluate_all: bool = typer.Option(False, "--evaluate-all", help="With --devices-per-round: the last round evaluates every device."),
    epsilon: float = typer.Option(8.0, "--epsilon", help="Privacy target per device for the whole run."),
    delta: float = typer.Option(1e-5, "--delta", help="Privacy delta."),
    non_private: bool = typer.Option(False, "--non-private", help="Turn DP off (comparison only; marked NON-PRIVATE everywhere)."),
    model: str = typer.Option("minilm-l6", "--model", help="Base model name (personal.models registry) or a local folder."),
    engine: str = typer.Option("fast", "--engine", help="fast (shared base per worker, devices sharded over --workers) | flower (Flower simulation runtime)."),
    mode: str = typer.Option("federated", "--mode", help="federated (federated + local personalization) | local (local only)."),
    federation_mode: str = typer.Option("secagg", "--federation-mode",
                                        help="secagg (noise shared by the cohort's devices) | device (full noise per device) | central (trusted server)."),
    out: Path = typer.Option(Path("simulation-out"), "--out", help="Output folder (results.json, plots, privacy report)."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, noise and the synthetic generator."),
    synthetic_devices: int = typer.Option(50, "--synthetic-devices", help="Owners the synthetic generator makes."),
    max_events: Optional[int] = typer.Option(None, "--max-events", help="Keep only each device's most recent N events."),
    threads: int = typer.Option(1, "--threads", help="torch threads per worker (1 is fastest on a busy machine)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Fast engine: worker processes the devices are sharded over, each with its own copy of the base (default: every core; results do not depend on it). Flower engine: CPUs of its local Ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Run on an existing Ray cluster (HOST:PORT): the fast engine's shards as Ray actors, or the Flower simulation. Vaults and --out must be on a filesystem every node sees."),
    audit_canaries: int = typer.Option(0, "--audit-canaries", help="Add K canary clients (federated, fast engine): an empirical user-level epsilon estimate next to the claim. They change the global adapter: an audit run."),
    habit_scorer: bool = typer.Option(True, "--habit-scorer/--no-habit-scorer", help="Federated: learn the habit scorer's shared weights with user-level DP-FedAvg (a share of ε)."),
    scorer_share: float = typer.Option(0.5, "--scorer-share", help="Share of the user-level ε the habit scorer spends (the LoRA rounds get the rest)."),
    scorer_rounds: int = typer.Option(60, "--scorer-rounds", help="DP-FedAvg rounds of the habit scorer (60: chosen on the foursquare validation split)."),
    scorer_cohort: int = typer.Option(100, "--scorer-cohort", help="Devices per habit-scorer round."),
    predictor: str = typer.Option("habit", "--predictor", help="What is trained and reported: habit (default: count features + DP habit scorer, whole ε; no LoRA) | lora (LoRA only, whole ε) | combined (both, ε split)."),
    combine_weight: float = typer.Option(1.0, "--combine-weight", help="Weight of the LoRA log-probability in the combined score (fixed, not tuned)."),
) -> None:
    """Simulate a population of devices personalizing with DP-LoRA; writes results.json and plots."""
    from simulations.runner import SimulationConfig, run_simulation

    data_dir = getattr(getattr(ctx, "obj", None), "data_dir", None)
    cfg = SimulationConfig(
        dataset=dataset, devices=devices, sample=sample, cold_start_devices=cold_start, rounds=rounds,
        devices_per_round=devices_per_round, evaluate_all=evaluate_all,
        epsilon=epsilon, delta=delta, non_private=non_private, model=model, engine=engine, mode=mode,
        federation_mode=federation_mode,
        out=str(out), seed=seed, synthetic_devices=synthetic_devices, max_events=max_events, threads=threads,
        workers=workers, ray_address=ray_address,
        data_dir=str(data_dir) if data_dir else None, audit_canaries=audit_canaries, habit_scorer=habit_scorer,
        scorer_share=scorer_share, scorer_rounds=scorer_rounds, scorer_cohort=scorer_cohort, predictor=predictor,
        combine_weight=combine_weight,
    )
    results = run_simulation(cfg, show_progress=True)
    print_summary(results, out)


BASELINE_ROWS = (("most_frequent", "most frequent"), ("markov", "Markov"), ("hour", "hour of day"),
                 ("slot", "weekday x part of day"), ("mix", "smoothed mix"), ("best_counting", "best counting"))


def print_summary(results: dict, out: Path) -> None:
    """A short Rich table of the run and where its files are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg, priv, base = results["config"], results["privacy"], results["baselines"]
    table = Table(title=f"homebody simulate: {cfg['dataset']} · {results['population']['devices']} devices · "
                        f"{cfg['mode']} · {cfg['engine']} engine")
    for col in ("", "top-1", "top-5"):
        table.add_column(col)
    for key, name in BASELINE_ROWS:
        if base.get(f"{key}_top1") is not None:
            table.add_row(f"{name} (baseline)", f"{base[f'{key}_top1']:.3f}", f"{base.get(f'{key}_top5', float('nan')):.3f}")
    final = results.get("final")
    if final:
        if final.get("global_top1") is not None:
            table.add_row("global adapter", f"{final['global_top1']:.3f}", "")
        for name, label in predictor_rows(results):
            if final.get(f"{name}_top1") is not None:
                table.add_row(label, f"{final[f'{name}_top1']:.3f}", _cell(final.get(f"{name}_top5")))
        table.add_row(f"personalized (= {results['config'].get('predictor', 'lora')})" if final.get("habit_top1") is not None
                      else "personalized", f"{final['top1']:.3f}", f"{final['top5']:.3f}")
    console.print(table)
    split = priv.get("budget_split") or {}
    if split.get("total") is not None:
        parts = [f"{name} ε {split[key]:.2f}" for key, name in (("habit_scorer", "habit scorer"), ("lora", "LoRA rounds"))
                 if split.get(key) is not None]
        console.print(f"budget split (user-level, {priv.get('accountant')}): " + ", ".join(parts + [f"composed ε {split['total']:.2f}"]))
    check = (results.get("habit_scorer") or {}).get("check")
    if check:
        verdict = "kept: devices rank with it" if check["kept"] else "not kept: every device uses its own counts"
        console.print(f"usefulness check: noised sum {check['noised_sum']:.2f} vs threshold {check['threshold']:.2f} "
                      f"over {check['devices']} devices; scorer {verdict}")
    trained = (results.get("predictor") or {}).get("trained")
    if trained is not None:
        console.print("trained: " + ("; ".join(trained) or "nothing (own counts only)"))
    if priv["private"]:
        console.print(f"privacy: {priv['unit']}-level ε spent max {final['epsilon_max']:.2f} / median "
                      f"{final['epsilon_median']:.2f} at δ={priv['delta']:g} ({priv.get('accountant')} accountant)"
                      if final else "privacy: no round finished")
        if priv.get("user_epsilon") is not None:
            console.print(f"         record-level ε ≤ {priv['record_epsilon']:.2f} at δ={priv['delta']:g}: {priv['record_note']}")
    else:
        console.print("[bold yellow]NON-PRIVATE run (ε = ∞): for comparison only[/]")
    console.print(f"status: {results['status']} · results: {out / 'results.json'}")
    for name in results.get("plots", {}).values():
        console.print(f"plot: {out / name}")
    if results.get("audit"):
        console.print(f"privacy report: {out / results['audit']['html']}")
    _print_canaries(console, results.get("canary_audit"))


def predictor_rows(results: dict) -> list[tuple[str, str]]:
    """(key, row name) of the habit predictor, the LoRA model and their combination, as this run made them."""
    cfg, kind = results.get("config", {}), (results.get("habit_scorer") or {}).get("kind", "")
    if kind == "federated":
        habit = "habit scorer (NON-PRIVATE DP-FedAvg)" if cfg.get("non_private") else "habit scorer (DP-FedAvg, user-level)"
    else:
        from simulations.habit_sim import OWN_COUNTS

        habit = f"own counts ({OWN_COUNTS.replace('_', ' ')}, on device)"
    lora = "LoRA personal model" + (" (local DP-SGD)" if cfg.get("mode") == "local" else "")
    return [("habit", habit), ("lora", lora), ("combined", f"combined (habit + {cfg.get('combine_weight', 1.0):g} x LoRA log-prob)")]


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _print_canaries(console, est: dict | None) -> None:
    """The canary clients' estimates (issue 17) next to the claimed user-level epsilon."""
    if not est:
        return
    it, fm = est["all_iterates"], est["final_model"]
    num = lambda x: f"{x:.2f}" if isinstance(x, (int, float)) else str(x)  # noqa: E731 (inf arrives as "inf")
    console.print(f"canary audit ({est['canaries']} canary clients, {est['rounds']} rounds): claimed user-level ε "
                  f"{est['claimed_epsilon']:g}; estimated ε {num(it['epsilon'])} (all iterates, ≥ "
                  f"{num(it['epsilon_lower'])} at {it['confidence']:.0%}), {num(fm['epsilon'])} (final model)"
                  + (" [bold red]CLAIM FAILS[/]" if est["flagged"] else ""), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
