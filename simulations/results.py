"""results.json: written atomically after every round, read back with inf/nan restored.

A run's file is its partial result at every moment (`status`: running, finishing, interrupted,
complete); `finished_results` tells a resuming caller whether a configuration is done.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from simulations.config import RoundResult, SimulationConfig

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1


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


def finished_results(out_dir: Path) -> dict | None:
    """The results of a run already complete in `out_dir`, or None (absent, running, interrupted)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return None
    results = load_results(path)
    return results if results.get("status") == "complete" else None


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
             progress: Callable[[int, RoundResult], None] | None = None, done_status: str = "complete") -> dict:
    """Run `step(r)` for r = 1..rounds, rewriting results.json after each round.

    On Ctrl-C the rounds finished so far stay, `status` becomes "interrupted" and `final` is the
    last finished round, so the file is a consistent partial result. After the last round the
    status is `done_status` (a caller that still adds results passes "finishing").
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
    results["status"] = done_status
    results["wall_s"] = time.perf_counter() - t0
    write_results(results, out_dir)
    return results

