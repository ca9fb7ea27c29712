"""The Flower engine: the federation's ServerApp + ClientApp in Flower's simulation runtime.

A thin adapter: it hands the prepared devices to `federation.simulation.run_simulation` (one
virtual SuperNode per device, Ray backend) with the same FederationConfig the fast engine uses,
and turns its history into the simulation's results (same keys per round).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

from simulations.devices import SimDevice
from simulations.config import SimulationConfig
from simulations.results import write_results


def _prepare_ledgers(devices: Sequence[SimDevice], cfg: SimulationConfig, folder: Path) -> None:
    """Give each virtual device's ledger (federation's per-device SQLite file) the run's budget policy."""
    import sqlite_utils
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.budget import BudgetPolicy, ReleaseGate

    folder.mkdir(parents=True, exist_ok=True)
    for d in devices:
        db = sqlite_utils.Database(folder / f"{d.user}.db")
        key_path = folder / f"{d.user}.key"  # the device key federation's _sim_gate signs with (policies are signed)
        if not key_path.exists():
            key_path.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
        signer = Ed25519PrivateKey.from_private_bytes(key_path.read_bytes())
        try:
            ReleaseGate(db, signer=signer).set_policy(d.user, "user", BudgetPolicy(epsilon_cap=cfg.epsilon, delta=cfg.delta))
        finally:
            db.close()


def run_flower(cfg: SimulationConfig, devices: Sequence[SimDevice], labels: Sequence[str], results: dict,
               out_dir: Path) -> dict:
    """Run all rounds in Flower's simulation runtime; fill `results` (rounds, final, devices)."""
    from federation.simulation import run_simulation
    from federation.sources import SimDevice as FlowerDevice
    from simulations.engine_fast import federation_config

    fcfg = federation_config(cfg, len(devices), len(labels))
    results["privacy"]["noise_multiplier"] = fcfg.noise_multiplier
    ledgers = None
    if not cfg.non_private:  # non-private rounds would be refused by a ledger's cap: run them without one
        ledgers = out_dir / "flower-ledgers"
        _prepare_ledgers(devices, cfg, ledgers)
    population = [FlowerDevice(d.user, list(d.examples)) for d in devices]
    t0 = time.perf_counter()
    history = run_simulation(population, fcfg, list(labels), ledger_dir=str(ledgers) if ledgers else None)
    wall = time.perf_counter() - t0
    previous = 0.0
    for rec in history.rounds:
        row = rec.to_dict()
        per_device = row.pop("per_device")
        row["devices_evaluated"] = len(per_device)
        row["global_top5"] = rec.mean("global-top5")
        row["wall_s"], previous = row["wall_s"] - previous, row["wall_s"]  # Flower reports time since start
        if cfg.non_private:
            row["epsilon_max"] = row["epsilon_median"] = math.inf
        for key in ("accepted", "rejected"):
            row[key] = len(row[key])
        row["declined"] = len(row["declined"])
        row["dropped"] = len(row["dropped"])
        results["rounds"].append(row)
    results["final"] = results["rounds"][-1] if results["rounds"] else None
    last = history.rounds[-1] if history.rounds else None
    participations = history.summary.participations if history.summary else {}
    results["devices"] = [
        {"user": d.user, "events": d.n_events, "group": d.group, "rounds": participations.get(d.user, 0),
         "epsilon": (math.inf if cfg.non_private else (last.epsilon.get(d.user, 0.0) if last else 0.0)),
         "top1": (last.evaluation.get(d.user, {}) if last else {}).get("top1"),
         "top5": (last.evaluation.get(d.user, {}) if last else {}).get("top5"),
         "global_top1": (last.evaluation.get(d.user, {}) if last else {}).get("global-top1")}
        for d in devices
    ]
    results["status"] = "finishing"  # run_simulation marks it complete once audit and plots are written
    results["timing"] = {"flower_s": wall, "device_rounds": sum(r.get("sampled", 0) for r in results["rounds"])}
    results["timing"]["device_rounds_per_min"] = 60 * results["timing"]["device_rounds"] / wall if wall else None
    results["privacy"]["accountant"] = "pld (server and Flower devices' ledgers)"
    write_results(results, out_dir)
    return results
