"""Simulation settings and per-round metrics: the types every engine and the runner share.

`SimulationConfig` is what the CLI builds from flags and results.json records; `RoundResult` is
what an engine returns for one round. Engines import these from here, never from the runner.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional

from personal.habits import COMBINE_WEIGHT, DEFAULT_PREDICTOR, PREDICTORS
from privacy.errors import HomebodyError

ROUND_KEYS = ("round", "top1", "top5", "global_top1", "epsilon_max", "epsilon_median", "bytes_up_per_device", "wall_s")


class BadSimulationConfig(HomebodyError):
    """A simulation setting is out of range or inconsistent."""


@dataclass
class SimulationConfig:
    """Everything a simulation run depends on; the CLI builds it from flags and results.json records it."""

    dataset: str = "synthetic"
    devices: Optional[int] = 50
    sample: bool = False
    cold_start_devices: int = 0  # guarantee this many cold-start devices (<= 20 events) in the selection
    rounds: int = 5
    devices_per_round: Optional[int] = None  # None: all devices every round
    # With a sampled cohort each round evaluates only its cohort; this makes the LAST round evaluate
    # every device (federated: each fine-tunes the final global adapter), so `final` covers everyone.
    evaluate_all: bool = False
    epsilon: float = 8.0  # target per device for the whole run (user-level when federated, record-level when local)
    delta: float = 1e-5
    non_private: bool = False
    model: str = "minilm-l6"
    engine: str = "fast"  # fast | flower
    mode: str = "federated"  # federated | local
    # Where the federated noise is added (federation.config.MODES): "secagg" (default) = each device
    # adds sigma*C/sqrt(K) so the cohort's sum carries sigma*C, as under SecAgg+; "device" = each
    # device adds the full sigma*C (no trust in aggregation; far noisier sums); "central" = a trusted
    # server adds sigma*C to the sum of clipped updates.
    federation_mode: str = "secagg"
    out: str = "simulation-out"
    seed: int = 0
    local_epochs: int = 1  # local passes per device per round
    personal_epochs: int = 1  # local personalization passes on top of the global adapter (federated mode)
    batch_size: int = 16
    learning_rate: float = 5e-3
    clip_norm: float = 1.0  # per-example clip (DP-SGD)
    update_clip: float = 1.0  # per-device update clip C (federated)
    lora_rank: int = 8
    max_events: Optional[int] = None  # most recent events kept per device (None: all)
    history: int = 3
    synthetic_devices: int = 50
    data_dir: Optional[str] = None
    fast_kdf: bool = True  # per-device vaults use a fast scrypt setting: simulation only, recorded
    # torch intra-op threads. One is fastest for the small per-device ops whenever anything else
    # competes for the cores (2 threads then spin-wait: 100x slower measured); try 2 on an idle machine.
    threads: int = 1
    # Fast engine: worker processes the devices are sharded over (None: every core; results do not
    # depend on it). Flower engine: the CPUs of its local Ray.
    workers: Optional[int] = None
    # An existing Ray cluster ("HOST:PORT" or "auto"): the fast engine's shards run as Ray actors
    # there, and the Flower engine's simulation runs there. None: this machine only.
    ray_address: Optional[str] = None
    # Canary clients (federation/canary.py, issue 17): 0 = none, the global adapter is untouched by any.
    audit_canaries: int = 0
    # The habit scorer (personal.habits; simulations.habit_sim). Federated (fast engine): its shared
    # weights are learnt with user-level DP-FedAvg before the LoRA rounds, for `scorer_share` of the
    # user-level epsilon (the LoRA rounds get the rest: calibrated with the scorer's release as a
    # prior). Local: each device's own counts, no release.
    habit_scorer: bool = True
    scorer_share: float = 0.5
    scorer_rounds: int = 60
    scorer_cohort: int = 100
    scorer_clip: float = 0.5
    # The suggestion `top1`/`top5` report, and what is trained (simulations.habit_sim): "habit" (count
    # features only: the scorer gets the whole user-level epsilon, no LoRA round or fine-tune runs),
    # "lora" (no scorer: the LoRA rounds get the whole epsilon) or "combined" (habit scores +
    # combine_weight x the LoRA log-probability; the budget split by scorer_share).
    # combine_weight is fixed a priori, never tuned on held-out events.
    # Both are the device's own constants (personal.habits): `homebody suggest` ranks with the same default.
    predictor: str = DEFAULT_PREDICTOR  # "habit": the best on foursquare-nyc (docs/BENCHMARKS.md, the ablation)
    combine_weight: float = COMBINE_WEIGHT

    def validate(self) -> None:
        """Raise BadSimulationConfig with one clear line for any setting out of range."""
        if self.engine not in ("fast", "flower"):
            raise BadSimulationConfig(f"--engine must be 'fast' or 'flower' (got {self.engine!r})")
        if self.mode not in ("federated", "local"):
            raise BadSimulationConfig(f"--mode must be 'federated' or 'local' (got {self.mode!r})")
        if self.engine == "flower" and self.mode != "federated":
            raise BadSimulationConfig("--engine flower runs federated rounds only; use --engine fast for --mode local")
        if self.engine == "flower" and self.evaluate_all:
            raise BadSimulationConfig("--evaluate-all needs --engine fast (Flower's ServerApp evaluates the sampled cohort)")
        if self.engine == "flower" and self.predictor != "lora":
            raise BadSimulationConfig("--engine flower trains the LoRA adapter only: use --predictor lora (or --engine fast)")
        if self.federation_mode not in ("secagg", "device", "central"):
            raise BadSimulationConfig(f"--federation-mode must be secagg, device or central (got {self.federation_mode!r})")
        if self.rounds < 1:
            raise BadSimulationConfig(f"--rounds must be at least 1 (got {self.rounds})")
        if self.devices is not None and self.devices < 1:
            raise BadSimulationConfig(f"--devices must be at least 1 (got {self.devices})")
        if self.cold_start_devices < 0:
            raise BadSimulationConfig(f"--cold-start must be 0 or more (got {self.cold_start_devices})")
        if self.devices_per_round is not None and self.devices_per_round < 1:
            raise BadSimulationConfig(f"--devices-per-round must be at least 1 (got {self.devices_per_round})")
        if not self.non_private and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise BadSimulationConfig(f"--epsilon must be a positive number (got {self.epsilon}); use --non-private for none")
        if not 0 < self.delta < 1:
            raise BadSimulationConfig(f"--delta must be in (0, 1) (got {self.delta})")
        if self.predictor not in PREDICTORS:
            raise BadSimulationConfig(f"--predictor must be {', '.join(PREDICTORS)} (got {self.predictor!r})")
        if not 0 < self.scorer_share < 1:
            raise BadSimulationConfig(f"--scorer-share must be in (0, 1) (got {self.scorer_share})")
        if self.scorer_rounds < 1 or self.scorer_cohort < 1:
            raise BadSimulationConfig(f"--scorer-rounds and --scorer-cohort must be at least 1 "
                                      f"(got {self.scorer_rounds}, {self.scorer_cohort})")
        if not (self.scorer_clip > 0 and math.isfinite(self.scorer_clip)):
            raise BadSimulationConfig(f"--scorer-clip must be a positive number (got {self.scorer_clip})")
        if not (self.combine_weight >= 0 and math.isfinite(self.combine_weight)):
            raise BadSimulationConfig(f"--combine-weight must be 0 or more (got {self.combine_weight})")
        if self.workers is not None and self.workers < 1:
            raise BadSimulationConfig(f"--workers must be at least 1 (got {self.workers})")
        if self.ray_address is not None and not self.ray_address.strip():
            raise BadSimulationConfig("--ray-address must name a cluster (HOST:PORT, or 'auto')")
        if self.threads < 1:
            raise BadSimulationConfig(f"--threads must be at least 1 (got {self.threads})")
        if self.audit_canaries and (self.audit_canaries < 2 or self.mode != "federated" or self.engine != "fast"
                                    or self.non_private or not self.trains_lora):
            raise BadSimulationConfig("--audit-canaries needs K >= 2 and a private federated run on the fast engine "
                                      "with LoRA rounds (--predictor lora or combined)")

    @property
    def trains_lora(self) -> bool:
        """Whether LoRA rounds (federated) / local DP-SGD (local) run: not for --predictor habit."""
        return self.predictor != "habit"

    @property
    def scorer_epsilon_share(self) -> float:
        """The share of the user-level epsilon the habit scorer spends: all of it without LoRA rounds."""
        return 1.0 if not self.trains_lora else self.scorer_share

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

