"""Canary clients for a one-shot empirical privacy estimate of a federated run (Andrew et al., ICLR 2024).

``k`` canary clients take part in the run like devices: in each round each is sampled at the
cohort's rate and, when sampled, sends an update that is a fixed random isotropic direction
scaled to the clip bound C, built (clipped and checked) by the same ``build_update`` a device
uses, without noise of its own (see ``updates``). Another ``unobserved`` random directions are drawn but never
sent: their cosines are the null distribution. Two statistics per direction:

* all iterates (the server, or anyone who sees every round's global adapter): the sum over rounds
  of the cosine between the direction and that round's change of the global adapter (the noised
  aggregate);
* final model (anyone who sees only the released adapter): the cosine with final - initial.

``privacy.whitebox.gaussian_shape_estimate`` then reads each as mu-GDP, as Andrew et al. fit
Gaussians to the inserted and unobserved canaries' cosines, and converts mu to epsilon at the run's
delta. It is an estimate (no confidence guarantee beyond the Gaussian fit), to be set next to the
accountant's user-level epsilon. Canaries change the global adapter when they are used, so a run
with canaries is an audit run; without them nothing here is ever called.

Assumptions: the cohort's sampling rate applies to canaries too (Poisson, one draw per canary per
round); the cosine normalises each round by the aggregate's norm, so the server's averaging
denominator (devices + sampled canaries) does not matter to the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from federation.update import AdapterSpec, Update, build_update, spec_dim
from privacy.errors import HomebodyError
from privacy.whitebox import GaussianShapeEstimate, gaussian_shape_estimate


class CanaryError(HomebodyError):
    """Canary clients cannot be set up with these settings."""


@dataclass(frozen=True)
class CanaryEstimate:
    """The two readings of one run with canary clients, next to the claimed user-level epsilon."""

    claimed_epsilon: float | None
    all_iterates: GaussianShapeEstimate
    final_model: GaussianShapeEstimate
    canaries: int
    unobserved: int
    rounds: int

    @property
    def flagged(self) -> bool:
        """The all-iterates estimate's lower limit exceeds the claim."""
        c = self.claimed_epsilon
        return c is not None and math.isfinite(c) and self.all_iterates.epsilon_lower > c

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"claimed_epsilon": self.claimed_epsilon, "flagged": self.flagged, "canaries": self.canaries,
                "unobserved": self.unobserved, "rounds": self.rounds, "all_iterates": self.all_iterates.to_dict(),
                "final_model": self.final_model.to_dict()}


def _flat(arrays: Mapping[str, np.ndarray], spec: AdapterSpec) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[name], np.float64).reshape(-1) for name in sorted(spec)])


class CanaryClients:
    """``k`` inserted and ``unobserved`` null random directions over the adapter's shared tensors."""

    def __init__(self, spec: AdapterSpec, k: int, clip_norm: float, *, unobserved: int = 1000, seed: int = 0) -> None:
        if k < 2 or unobserved < 2:
            raise CanaryError(f"need at least 2 canaries and 2 unobserved directions, got {k} and {unobserved}")
        if not clip_norm > 0:
            raise CanaryError(f"clip norm must be > 0, got {clip_norm}")
        self.spec, self.k, self.clip_norm = dict(spec), k, clip_norm
        self.dim = spec_dim(spec)
        self._rng = np.random.default_rng([seed, 0xCA7A])
        dirs = self._rng.normal(size=(k + unobserved, self.dim))
        self.directions = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        self.inserted = np.arange(k + unobserved) < k
        self.sum_cos = np.zeros(k + unobserved)
        self.rounds = 0
        self.participations = np.zeros(k, dtype=int)
        self.initial: dict[str, np.ndarray] = {}

    def start(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Remember the global adapter the run starts from (for the final-model reading)."""
        self.initial = {k: np.array(v, np.float32) for k, v in arrays.items()}

    def _arrays(self, i: int) -> dict[str, np.ndarray]:
        """Canary ``i``'s update before noise: its direction at norm C, shaped like the adapter."""
        out, flat, at = {}, self.directions[i] * self.clip_norm, 0
        for name in sorted(self.spec):
            size = math.prod(self.spec[name])
            out[name] = flat[at:at + size].reshape(self.spec[name]).astype(np.float32)
            at += size
        return out

    def updates(self, round: int, sample_rate: float) -> list[Update]:
        """This round's canary updates: each canary sampled at ``sample_rate``, clipped like a device's.

        A canary is the auditor's own client and adds no noise of its own, so the aggregate
        carries exactly the noise the run's devices (or its server) add: what the claim covers.
        """
        sampled = np.nonzero(self._rng.random(self.k) < sample_rate)[0]
        self.participations[sampled] += 1
        return [build_update(self._arrays(int(i)), self.spec, round=round, device_id=f"canary-{i}",
                             clip_norm=self.clip_norm, sigma=0.0, rng=self._rng)[0] for i in sampled]

    def observe(self, before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> None:
        """Add the cosines of every direction with this round's change of the global adapter."""
        change = _flat(after, self.spec) - _flat(before, self.spec)
        norm = float(np.linalg.norm(change))
        self.rounds += 1
        if norm > 0:
            self.sum_cos += self.directions @ change / norm

    def estimate(self, initial: Mapping[str, np.ndarray], final: Mapping[str, np.ndarray], delta: float,
                 claimed_epsilon: float | None = None, confidence: float = 0.95) -> CanaryEstimate:
        """Both readings (all iterates, final model) as mu-GDP epsilons at ``delta``."""
        change = _flat(final, self.spec) - _flat(initial, self.spec)
        norm = float(np.linalg.norm(change))
        final_cos = self.directions @ change / norm if norm > 0 else np.zeros(len(self.directions))
        return CanaryEstimate(
            claimed_epsilon=claimed_epsilon,
            all_iterates=gaussian_shape_estimate(self.sum_cos, self.inserted, delta, confidence),
            final_model=gaussian_shape_estimate(final_cos, self.inserted, delta, confidence),
            canaries=self.k, unobserved=len(self.directions) - self.k, rounds=self.rounds,
        )
