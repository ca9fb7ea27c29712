"""The Flower engine: the federation's ServerApp + ClientApp in Flower's simulation runtime.

A thin adapter implementing the Engine protocol (simulations.engines): it hands the prepared
devices to `federation.simulation.run_simulation` (one virtual SuperNode per device, Ray backend:
a local Ray with --workers CPUs, or the existing cluster at --ray-address) with the same
FederationConfig the fast engine uses, and turns its history into the simulation's rounds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

from simulations.config import ROUND_KEYS, RoundResult, SimulationConfig
from simulations.devices import SimDevice


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


class FlowerEngine:
    """The Engine protocol over Flower's simulation runtime. Flower runs every round in one call, so
    the first `round(1)` runs the whole simulation and each `round(r)` returns round r's metrics."""

    def __init__(self, cfg: SimulationConfig, devices: Sequence[SimDevice], labels: Sequence[str], out_dir: Path,
                 tick: Callable[[int], None] | None = None) -> None:
        from simulations.engine_fast import federation_config

        self.cfg, self.devices, self.labels, self.out_dir = cfg, list(devices), list(labels), Path(out_dir)
        self.fcfg = federation_config(cfg, len(self.devices), len(self.labels))
        self.ledgers = None if cfg.non_private else self.out_dir / "flower-ledgers"  # a non-private run has none
        self.devices_per_round = len(self.devices)
        self.history = None
        self.wall_s = 0.0

    def prepare(self, results: dict, progress: Callable[[str, int | None], Callable[[int], None]]) -> None:
        """Before the rounds: the noise in `results`, each device's ledger given the run's budget policy."""
        results["privacy"]["noise_multiplier"] = self.fcfg.noise_multiplier
        results["habit_scorer"] = {"kind": "not run: the Flower engine trains the LoRA adapter only (use --engine fast)"}
        if self.ledgers is not None:
            _prepare_ledgers(self.devices, self.cfg, self.ledgers)
        progress(f"Flower simulation ({self.cfg.rounds} rounds)", None)

    def _run(self) -> None:
        """All rounds in Flower's simulation runtime (a local Ray, or the cluster at --ray-address)."""
        from federation.simulation import run_simulation
        from federation.sources import SimDevice as FlowerDevice
        from simulations.workers import check_ray_address, default_workers

        if self.cfg.ray_address:
            check_ray_address(self.cfg.ray_address)
        population = [FlowerDevice(d.user, list(d.examples)) for d in self.devices]
        cpus = self.cfg.workers or default_workers()
        t0 = time.perf_counter()
        self.history = run_simulation(population, self.fcfg, self.labels, ledger_dir=str(self.ledgers) if self.ledgers else None,
                                      num_cpus=cpus, ray_address=self.cfg.ray_address)
        self.wall_s = time.perf_counter() - t0

    def round(self, r: int) -> RoundResult:
        """Round r's metrics (the first call runs the simulation)."""
        if self.history is None:
            self._run()
        rec = self.history.rounds[r - 1]
        previous = self.history.rounds[r - 2].wall_s if r > 1 else 0.0
        row = rec.to_dict()
        per_device = row.pop("per_device")
        row["devices_evaluated"] = len(per_device)
        row["global_top5"] = rec.mean("global-top5")
        row["wall_s"] = row["wall_s"] - previous  # Flower reports time since start
        if self.cfg.non_private:
            row["epsilon_max"] = row["epsilon_median"] = math.inf
        for key in ("accepted", "rejected", "declined", "dropped"):
            row[key] = len(row[key])
        return RoundResult(**{k: row.pop(k) for k in ROUND_KEYS}, extra=row)

    def device_rows(self) -> list[dict]:
        """Per device: events, group, epsilon spent, rounds taken part in, last evaluation."""
        last = self.history.rounds[-1] if self.history and self.history.rounds else None
        participations = self.history.summary.participations if self.history and self.history.summary else {}
        rows = []
        for d in self.devices:
            ev = last.evaluation.get(d.user, {}) if last else {}
            rows.append({"user": d.user, "events": d.n_events, "group": d.group, "rounds": participations.get(d.user, 0),
                         "epsilon": math.inf if self.cfg.non_private else (last.epsilon.get(d.user, 0.0) if last else 0.0),
                         "top1": ev.get("top1"), "top5": ev.get("top5"), "global_top1": ev.get("global-top1")})
        return rows

    def personal_hits(self, d: SimDevice) -> None:
        """The planted-routine check needs the personal adapters, which Flower's ClientApp keeps: none here."""
        return None

    def finish(self, results: dict) -> None:
        """After the rounds: Flower's wall time and throughput, and which accountant its ledgers use."""
        device_rounds = sum(r.get("sampled", 0) for r in results["rounds"])
        results.setdefault("timing", {}).update({
            "flower_s": self.wall_s, "device_rounds": device_rounds, "ray_address": self.cfg.ray_address,
            "device_rounds_per_min": 60 * device_rounds / self.wall_s if self.wall_s else None})
        results["privacy"]["accountant"] = "pld (server and Flower devices' ledgers)"

    def ledger_summaries(self) -> tuple[str, list]:
        """(accountant, each device's DeviceSummary from the per-device ledgers the Flower devices keep;
        a non-private run has none: every device is reported at inf)."""
        import sqlite_utils
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from privacy.report import DeviceSummary

        unit, out = self.cfg.epsilon_unit, []
        for d in self.devices:
            if self.ledgers is None:
                out.append(DeviceSummary(d.user, math.inf, self.cfg.delta, self.cfg.rounds, unit))
                continue
            db = sqlite_utils.Database(self.ledgers / f"{d.user}.db")
            signer = Ed25519PrivateKey.from_private_bytes((self.ledgers / f"{d.user}.key").read_bytes())
            try:
                out.append(DeviceSummary.from_ledger(db, d.user, d.user, unit, "pld", signer=signer))
            finally:
                db.close()
        return "pld", out

    def close(self) -> None:
        """Nothing to release: Flower's runtime stopped at the end of the simulation."""
