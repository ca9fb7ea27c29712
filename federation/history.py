"""What a federated run produced, round by round: the results types the simulations and the CLI read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federation.server import PopulationSummary, Rejection
from federation.update import Arrays


@dataclass
class RoundRecord:
    """Per-round outcome as the simulations and the CLI report it."""

    round: int
    sampled: int = 0
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def mean(self, key: str) -> float | None:
        values = [m[key] for m in self.evaluation.values() if key in m]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        eps = list(self.epsilon.values())
        return {
            "round": self.round,
            "top1": self.mean("top1"), "top5": self.mean("top5"),
            "global_top1": self.mean("global-top1"), "global_top5": self.mean("global-top5"),
            "bytes_up_per_device": float(np.mean(list(self.bytes_up.values()))) if self.bytes_up else 0.0,
            "epsilon_max": max(eps) if eps else 0.0,
            "epsilon_median": float(np.median(eps)) if eps else 0.0,
            "sampled": self.sampled, "accepted": list(self.accepted),
            "rejected": [r.__dict__ for r in self.rejected], "dropped": dict(self.dropped),
            "declined": dict(self.declined), "per_device": {k: dict(v) for k, v in self.evaluation.items()},
            "wall_s": self.wall_s,
        }


@dataclass
class FederationHistory:
    """Everything a run produced: rounds, the final global arrays and the population accounting."""

    rounds: list[RoundRecord]
    arrays: Arrays
    summary: PopulationSummary | None = None
    initial_arrays: Arrays = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": [r.to_dict() for r in self.rounds], "summary": self.summary.to_dict() if self.summary else None}
