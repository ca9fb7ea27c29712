"""`homebody sweep ...`: the privacy–utility table in one command (a thin layer over simulations.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from simulations.config import BadSimulationConfig


def parse_epsilons(first: str, extra: list[str]) -> tuple[float, ...]:
    """`--epsilons 1 3 8`, `--epsilons 1,3,8` or `--epsilons ""` (none) → (1.0, 3.0, 8.0)."""
    values = []
    for word in [*first.replace(",", " ").split(), *extra]:
        try:
            values.append(float(word))
        except ValueError:
            raise BadSimulationConfig(f"--epsilons takes numbers (got {word!r})") from None
    return tuple(values)


def sweep(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", "--dataset", help="synthetic | foursquare-nyc | events:PATH"),
    epsilons: str = typer.Option("1 3 8", "--epsilons",
                                 help="Privacy targets per device: --epsilons 1 3 8 (or 1,3,8; \"\" for none)."),
    modes: str = typer.Option("local,federated", "--modes", help="Comma-separated: local, federated."),
    non_private: bool = typer.Option(True, "--non-private/--no-non-private",
                                     help="Also run each mode without DP (marked NON-PRIVATE)."),
    devices: Optional[int] = typer.Option(50, "--devices", help="Keep the N devices with the most events."),
    cold_start: int = typer.Option(0, "--cold-start", help="Include this many cold-start devices (<= 20 events)."),
    rounds: int = typer.Option(5, "--rounds", help="Federated rounds."),
    local_rounds: Optional[int] = typer.Option(None, "--local-rounds", help="Local-only DP-SGD passes (default: --rounds)."),
    devices_per_round: Optional[int] = typer.Option(None, "--devices-per-round", help="Federated cohort size (default: all)."),
    evaluate_all: bool = typer.Option(False, "--evaluate-all", help="With --devices-per-round: the last round scores every device."),
    max_events: Optional[int] = typer.Option(None, "--max-events", help="Keep only each device's most recent N events."),
    delta: float = typer.Option(1e-5, "--delta", help="Privacy delta."),
    model: str = typer.Option("minilm-l6", "--model", help="Base model name or a local folder."),
    seed: int = typer.Option(0, "--seed", help="Seed for device selection, simulated noise and the synthetic generator."),
    threads: int = typer.Option(1, "--threads", help="torch threads."),
    out: Path = typer.Option(Path("sweep-out"), "--out", help="Results folder (one sub-folder per configuration)."),
    predictor: str = typer.Option("habit", "--predictor", help="habit (default: no LoRA) | lora | combined: what every run trains."),
) -> None:
    """Run every mode × ε (resuming finished ones) and write table.md, table.json and an accuracy-vs-ε plot."""
    from simulations.runner import SimulationConfig
    from simulations.sweep import SweepConfig, run_sweep

    data_dir = getattr(getattr(ctx, "obj", None), "data_dir", None)
    base = SimulationConfig(dataset=dataset, devices=devices, cold_start_devices=cold_start, rounds=rounds,
                            devices_per_round=devices_per_round, evaluate_all=evaluate_all, delta=delta,
                            model=model, seed=seed, max_events=max_events, threads=threads, predictor=predictor,
                            data_dir=str(data_dir) if data_dir else None)
    cfg = SweepConfig(epsilons=parse_epsilons(epsilons, list(ctx.args)),
                      modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                      non_private=non_private, local_rounds=local_rounds, out=str(out), base=base)
    table = run_sweep(cfg, show_progress=True, log=lambda line: typer.echo(line))
    typer.echo((out / table["files"]["markdown"]).read_text())
    for name in table["files"].values():
        typer.echo(f"wrote {out / name}")


def register(app: typer.Typer) -> None:
    # Extra words after --epsilons (`--epsilons 1 3 8`) arrive in ctx.args and are parsed as more targets.
    app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(sweep)
