"""The simulation runner: configuration, the round loop, results.json, and a clean Ctrl-C.

`run_simulation(cfg)` loads a population, computes the baselines, hands the devices to an
engine (fast or flower), and after every round rewrites `results.json` atomically, so that an
interrupted run (Ctrl-C) always leaves a consistent partial result (`"status": "interrupted"`).
At the end it writes the plots and the population privacy report.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from privacy.errors import HomebodyError

RESULTS_FILE = "results.json"
ROUND_KEYS = ("round", "top1", "top5", "global_top1", "epsilon_max", "epsilon_median", "bytes_up_per_device", "wall_s")
SCHEMA_VERSION = 1


class BadSimulationConfig(HomebodyError):
    """A simulation setting is out of range or inconsistent."""


@dataclass
class SimulationConfig:
    """Everything a simulation run depends on; the CLI builds it from flags and results.json records it."""

    dataset: str = "synthetic"
    devices: Optional[int] = 50
    sample: bool = False
    rounds: int = 5
    devices_per_round: Optional[int] = None  # None: all devices every round
    epsilon: float = 8.0  # target per device for the whole run (user-level when federated, record-level when local)
    delta: float = 1e-5
    non_private: bool = False
    model: str = "minilm-l6"
    engine: str = "fast"  # fast | flower
    mode: str = "federated"  # federated | local
    out: str = "simulation-out"
    seed: int = 0
    local_epochs: int = 1  # local passes per device per round
    personal_epochs: int = 2  # local personalization passes on top of the global adapter (federated mode)
    batch_size: int = 16
    learning_rate: float = 5e-3
    clip_norm: float = 1.0  # per-example clip (DP-SGD)
    update_clip: float = 1.0  # per-device update clip C (federated)
    lora_rank: int = 8
    lora_layers: int = 1  # LoRA on the top N encoder layers: the rest is frozen and cached
    max_events: Optional[int] = None  # most recent events kept per device (None: all)
    history: int = 3
    synthetic_devices: int = 50
    data_dir: Optional[str] = None
    fast_kdf: bool = True  # per-device vaults use a fast scrypt setting: simulation only, recorded

    def validate(self) -> None:
        """Raise BadSimulationConfig with one clear line for any setting out of range."""
        if self.engine not in ("fast", "flower"):
            raise BadSimulationConfig(f"--engine must be 'fast' or 'flower' (got {self.engine!r})")
        if self.mode not in ("federated", "local"):
            raise BadSimulationConfig(f"--mode must be 'federated' or 'local' (got {self.mode!r})")
        if self.rounds < 1:
            raise BadSimulationConfig(f"--rounds must be at least 1 (got {self.rounds})")
        if self.devices is not None and self.devices < 1:
            raise BadSimulationConfig(f"--devices must be at least 1 (got {self.devices})")
        if self.devices_per_round is not None and self.devices_per_round < 1:
            raise BadSimulationConfig(f"--devices-per-round must be at least 1 (got {self.devices_per_round})")
        if not self.non_private and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise BadSimulationConfig(f"--epsilon must be a positive number (got {self.epsilon}); use --non-private for none")
        if not 0 < self.delta < 1:
            raise BadSimulationConfig(f"--delta must be in (0, 1) (got {self.delta})")

    @property
    def epsilon_unit(self) -> str:
        """user-level for federated runs (the whole device), record-level for local-only runs (one event)."""
        return "user" if self.mode == "federated" else "record"

    def to_json(self) -> dict:
        d = asdict(self)
        d["epsilon_unit"] = self.epsilon_unit
        d["private"] = not self.non_private
        if self.non_private:
            d["epsilon"] = None
        d["kdf"] = "fast scrypt (simulation only)" if self.fast_kdf else "default scrypt"
        return d


@dataclass
class RoundResult:
    """The metrics of one round (the keys issue 6 names), plus free-form extras."""

    round: int
    top1: float
    top5: float
    global_top1: Optional[float]
    epsilon_max: float
    epsilon_median: float
    bytes_up_per_device: float
    wall_s: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ROUND_KEYS}
        d.update(self.extra)
        return d


def epsilon_stats(per_device: list[float]) -> tuple[float, float]:
    """(max, median) of the epsilon spent per device; inf for non-private runs, 0 when none spent."""
    if not per_device:
        return 0.0, 0.0
    return max(per_device), statistics.median(per_device)


def _json_safe(value):
    """JSON has no inf/nan: write them as the strings 'inf' / 'nan' (read back by `load_results`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _from_json(value):
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write_results(results: dict, out_dir: Path) -> Path:
    """Atomically (tmp file + rename) write results.json so a reader never sees half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(results), indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_results(path: Path) -> dict:
    """Read a results.json back, turning 'inf'/'nan' strings into floats."""
    return _from_json(json.loads(Path(path).read_text()))


def new_results(cfg: SimulationConfig, population: dict, baselines: dict) -> dict:
    """The results skeleton written before the first round."""
    return {
        "schema": SCHEMA_VERSION,
        "status": "running",
        "config": cfg.to_json(),
        "population": population,
        "baselines": baselines,
        "rounds": [],
        "final": None,
        "devices": [],
        "privacy": {
            "unit": cfg.epsilon_unit,
            "delta": cfg.delta,
            "epsilon_target": None if cfg.non_private else cfg.epsilon,
            "private": not cfg.non_private,
            "note": "NON-PRIVATE comparison run" if cfg.non_private else f"DP on: {cfg.epsilon_unit}-level (ε, δ)",
        },
    }


def run_loop(results: dict, rounds: int, step: Callable[[int], RoundResult], out_dir: Path,
             progress: Callable[[int, RoundResult], None] | None = None) -> dict:
    """Run `step(r)` for r = 1..rounds, rewriting results.json after each round.

    On Ctrl-C the rounds finished so far stay, `status` becomes "interrupted" and `final` is the
    last finished round, so the file is a consistent partial result.
    """
    t0 = time.perf_counter()
    try:
        for r in range(1, rounds + 1):
            res = step(r)
            results["rounds"].append(res.to_json())
            results["final"] = res.to_json()
            results["wall_s"] = time.perf_counter() - t0
            write_results(results, out_dir)
            if progress:
                progress(r, res)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        results["wall_s"] = time.perf_counter() - t0
        write_results(results, out_dir)
        raise
    results["status"] = "complete"
    results["wall_s"] = time.perf_counter() - t0
    write_results(results, out_dir)
    return results
