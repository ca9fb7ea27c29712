"""The Engine protocol: what the runner asks of a simulation engine, and `make_engine` to build one.

Both engines (`simulations.engine_fast.FastEngine`, `simulations.engine_flower.FlowerEngine`)
implement it, so the runner knows no engine by name and imports neither (they are imported here,
on demand, and never import the runner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from simulations.config import RoundResult, SimulationConfig
from simulations.devices import FeatureCache, SimDevice

# progress(description, total) -> advance(n): a new progress line and the function that moves it
Progress = Callable[[str, "int | None"], Callable[[int], None]]


@runtime_checkable
class Engine(Protocol):
    """A simulation engine: prepare, run rounds one by one, report per-device results, close."""

    devices_per_round: int  # devices each round trains (the progress bar's length)

    def prepare(self, results: dict, progress: Progress) -> None:
        """Before the first round: add what the run set up (noise, habit scorer...) to `results`."""

    def round(self, r: int) -> RoundResult:
        """Run (or report) round r, 1-based, in order."""

    def device_rows(self) -> list[dict]:
        """Per device: user, events, group, epsilon, rounds, last evaluation (top1, top5, global_top1...)."""

    def personal_hits(self, d: SimDevice) -> dict[str, list[bool]] | None:
        """Per held-out example and predictor: top-1 right? None when the engine cannot tell."""

    def finish(self, results: dict) -> None:
        """After the rounds: add timing and audits to `results`."""

    def ledger_summaries(self) -> tuple[str, list]:
        """(accountant, a privacy.report.DeviceSummary per device from its ledger)."""

    def close(self) -> None:
        """Release workers, caches and anything else the engine holds."""


def make_engine(cfg: SimulationConfig, devices: Sequence[SimDevice], labels: Sequence[str], out_dir: Path,
                tick: Callable[[int], None] | None = None, cache: FeatureCache | None = None) -> Engine:
    """The engine `cfg.engine` names, over these devices. `cache`: a feature cache shared across
    runs (fast engine, one worker)."""
    if cfg.engine == "flower":
        from simulations.engine_flower import FlowerEngine

        return FlowerEngine(cfg, devices, labels, out_dir, tick)
    from simulations.engine_fast import FastEngine

    return FastEngine(cfg, devices, labels, Path(out_dir) / ".feature-cache", tick, cache)
