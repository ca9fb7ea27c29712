"""`homebody demo`: what `make demo` runs.

1. A short walk-through of the encrypted vault on a temporary file (a week of synthetic habit
   events for two people): sealing, no plaintext in the file bytes, rotation, forget, tamper
   detection, wrong passphrase.
2. The main job: `homebody simulate` on embedded defaults (50 synthetic owners with planted
   routines, fast engine, the default predictor: the habit scorer learnt with user-level DP-FedAvg
   for the whole ε, no LoRA; `--predictor combined` adds the LoRA rounds on minilm-l6 on a split
   budget), then a short results table (every counting baseline incl. best counting, the habit
   scorer, and the LoRA model and the combination when they ran) and where results.json, the plots
   and the privacy report are.
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from simulations.config import SimulationConfig

DEMO_PASSPHRASE = "correct horse battery staple"  # demo only: a temporary vault deleted at the end
# (event, usual hour, hour jitter, place)
_ROUTINE = (("wake", 7.0, 0.5, "home"), ("coffee", 8.0, 0.5, "cafe"), ("run", 18.0, 1.0, "park"), ("sleep", 23.0, 0.7, "home"))


def demo_events(people: tuple[str, ...] = ("alex", "sam"), days: int = 7, seed: int = 7) -> list:
    """A week of synthetic routines (deterministic): every event's text carries the marker 'diary'."""
    from personal.vault import Event

    rng = random.Random(seed)
    start = datetime(2024, 3, 4)
    events = []
    for person in people:
        for day in range(days):
            for name, hour, jitter, place in _ROUTINE:
                when = start + timedelta(days=day, hours=hour + rng.uniform(-jitter, jitter))
                text = f"diary: {person} felt {rng.choice(['great', 'tired', 'calm'])}" if rng.random() < 0.3 else None
                events.append(Event(person, when.replace(microsecond=0, second=0), name, {"place": place}, text))
    return events


def _file_bytes(path: Path) -> bytes:
    """The database file plus its WAL and journal, as an attacker with the disk would see them."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


def vault_walkthrough() -> None:
    """Step 1: the encrypted vault, on a temporary file deleted at the end."""
    from personal.events_io import export_events, read_events
    from personal.vault import Vault

    out = Console()
    with tempfile.TemporaryDirectory(prefix="homebody-demo-") as tmp:
        path, csv_path = Path(tmp) / "vault.db", Path(tmp) / "events.csv"
        out.rule("[bold]homebody demo: the encrypted vault")
        with out.status("deriving the key from the passphrase (scrypt)..."):
            vault = Vault.create(path, DEMO_PASSPHRASE)
        with vault:
            out.print(f"1. created {path.name}: {vault.info()['kdf']}, device key {vault.public_key().public_bytes_raw().hex()[:16]}...")
            export_events(demo_events(), csv_path)
            events = read_events(csv_path).events
            vault.add_events(events)
            out.print(f"2. imported {len(events)} synthetic events from a CSV file: " + ", ".join(f"{p} ({vault.count(p)})" for p in vault.profiles()))
            table = Table("timestamp", "event", "context", "text", title="alex's first events, decrypted")
            for ev in vault.events("alex")[:5]:
                table.add_row(ev.timestamp.isoformat(), ev.event, str(ev.context), ev.text or "")
            out.print(table)
            raw = _file_bytes(path)
            probes = ["diary", "coffee", "alex", events[0].timestamp.isoformat()]
            found = [p for p in probes if p.encode() in raw]
            out.print(f"3. searched {len(raw):,} raw bytes of the file and WAL for {probes}: {'FOUND ' + str(found) if found else 'none found'}")
            vault.put_artefact("alex", "demo", "routine-summary", b"wake 07:00, sleep 23:00", {"note": "stand-in for an adapter"})
            out.print(f"4. stored a sealed artefact for alex: {vault.list_artefacts('alex')}")
            vault.rotate_data_key()
            out.print(f"5. rotated the data key: {vault.count()} events still there, verify ok = {vault.verify().ok}")
            before = vault.db.execute("SELECT profile, event FROM events").fetchall()
            vault.forget("sam")
            kept = {row[0] for row in vault.db.execute("SELECT DISTINCT profile FROM events")}
            sam_rows = [bytes(blob) for pid, blob in before if pid not in kept]
            raw = _file_bytes(path)
            left = sum(blob in raw for blob in sam_rows)
            out.print(f"6. forgot sam: profiles now {vault.profiles()}, {left} of sam's {len(sam_rows)} ciphertexts left in the file bytes")
        tampered = Path(tmp) / "tampered.db"
        data = bytearray(path.read_bytes())
        with Vault.open(path, DEMO_PASSPHRASE) as vault:
            blob = bytes(vault.db.execute("SELECT ts FROM events LIMIT 1").fetchone()[0])
        pos = bytes(data).find(blob) + len(blob) - 1
        data[pos] ^= 0x01
        tampered.write_bytes(bytes(data))
        with Vault.open(tampered, DEMO_PASSPHRASE) as copy:
            report = copy.verify()
        out.print(f"7. flipped one bit of a sealed timestamp in a copy: verify ok = {report.ok}; {report.failures[0] if report.failures else ''}")
        try:
            Vault.open(path, "wrong passphrase")
        except Exception as exc:  # noqa: BLE001 - shown to the user as part of the demo
            out.print(f"8. opening with a wrong passphrase: [red]{exc}[/]")
        out.rule("[green]done: the temporary vault is deleted")


# The embedded default. The default predictor (habit) trains no LoRA, so the demo affords 50 owners
# (a federation of 12 is too small for the scorer to learn the weekly routines: 0.52 top-1 measured);
# rounds and personal epochs apply to --predictor lora/combined (12 owners x 200 events, 2 rounds,
# 3 personal epochs was the LoRA demo: docs/BENCHMARKS.md).
DEMO_DEFAULTS = dict(dataset="synthetic", synthetic_devices=50, devices=50, rounds=2, model="minilm-l6",
                     epsilon=8.0, mode="federated", engine="fast", max_events=200, personal_epochs=3,
                     predictor=SimulationConfig.predictor)


def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where results.json, the plots and the privacy report go."),
    model: str = typer.Option(DEMO_DEFAULTS["model"], "--model", help="Base model of the simulation."),
    devices: int = typer.Option(DEMO_DEFAULTS["devices"], "--devices", help="Synthetic owners simulated."),
    rounds: int = typer.Option(DEMO_DEFAULTS["rounds"], "--rounds", help="Federated rounds."),
    max_events: int = typer.Option(DEMO_DEFAULTS["max_events"], "--max-events", help="Most recent events kept per owner."),
    skip_vault: bool = typer.Option(False, "--skip-vault", help="Skip the vault walk-through."),
    skip_simulation: bool = typer.Option(False, "--skip-simulation", help="Only the vault walk-through."),
    threads: Optional[int] = typer.Option(1, "--threads", help="torch threads for the simulation."),
    predictor: str = typer.Option(DEMO_DEFAULTS["predictor"], "--predictor",
                                  help="habit (default: no LoRA) | lora | combined (habit scorer + LoRA, ε split)."),
) -> None:
    """Run the main job on embedded defaults: a vault walk-through, then a simulation of many devices."""
    if not skip_vault:
        vault_walkthrough()
    if skip_simulation:
        raise typer.Exit(0)
    from simulations.cli_simulate import print_summary
    from simulations.runner import run_simulation

    data_dir = getattr(getattr(ctx, "obj", None), "data_dir", None)
    cfg = SimulationConfig(**{**DEMO_DEFAULTS, "model": model, "devices": devices, "synthetic_devices": devices,
                              "rounds": rounds, "max_events": max_events, "out": str(out), "threads": threads or 1,
                              "predictor": predictor,
                              "data_dir": str(data_dir) if data_dir else None})
    what = {"habit": "a DP habit scorer over their own counts (no LoRA: it does not help, docs/BENCHMARKS.md)",
            "lora": f"DP-LoRA ({model})", "combined": f"a DP habit scorer + DP-LoRA ({model})"}[cfg.predictor]
    Console().rule(f"[bold]homebody demo: {devices} simulated devices personalize with {what}")
    results = run_simulation(cfg, show_progress=True)
    print_summary(results, out)
    planted = results.get("planted") or {}
    weekly = planted.get("weekly_routines")
    if weekly and weekly["events"]:
        Console().print(f"planted weekly routines ({weekly['events']} held-out events): personalized top-1 "
                        f"{weekly['personalized_top1']:.3f} vs Markov {weekly['markov_top1']:.3f}"
                        + "".join(f", {name} {weekly[key]:.3f}" for key, name in (
                            ("best_counting_top1", "best counting"), ("habit_top1", "habit scorer"),
                            ("lora_top1", "LoRA alone")) if weekly.get(key) is not None), highlight=False)
    raise typer.Exit(0)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
