"""Aggregation on the server: check every update, reject with a logged reason, FedAvg the rest.

The server never trusts a device's header for the privacy parameters: it checks each
decoded update against its own clip norm and the noise multiplier its mode prescribes.
Averaging is unweighted (each device counts once): weighting by example counts would make
one device's influence data-dependent and break the user-level sensitivity C.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from federation.config import FederationConfig
from federation.update import AdapterSpec, Arrays, Update, UpdateRejected, check_update
from privacy.randomness import SecureGenerator

LOG = logging.getLogger("homebody.federation.server")


@dataclass(frozen=True)
class Rejection:
    """One refused update and why (reason is one of UpdateRejected.REASONS)."""

    device_id: str
    round: int
    reason: str
    detail: str


@dataclass
class RoundOutcome:
    """What one aggregation did: the new global tensors and who counted, who did not."""

    arrays: Arrays
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    changed: bool = False


def server_sigma(config: FederationConfig) -> float:
    """The noise multiplier the server expects on each received update."""
    return config.device_sigma


def screen(updates: Iterable[Update], spec: AdapterSpec, config: FederationConfig, round: int) -> tuple[list[Update], list[Rejection]]:
    """Split updates into accepted and rejected, logging each rejection with its reason.

    A device counts once per round: a second update under a device id already accepted this
    round is rejected, so user-level accounting and the mean stay one-user-one-vote.
    """
    accepted, rejected, seen = [], [], set()
    for update in updates:
        try:
            if update.header.round != round:
                raise UpdateRejected("bad-header", f"update for round {update.header.round} received in round {round}")
            if update.header.device_id in seen:
                raise UpdateRejected("bad-header", f"device {update.header.device_id} already sent an update this round")
            check_update(update, spec, config.clip_norm, sigma=server_sigma(config))
        except UpdateRejected as exc:
            rejection = Rejection(update.header.device_id, round, exc.reason, exc.detail)
            LOG.warning("round %d: rejected update from device %s: %s (%s)", round, rejection.device_id, exc.reason, exc.detail)
            rejected.append(rejection)
            continue
        accepted.append(update)
        seen.add(update.header.device_id)
    return accepted, rejected


def aggregate(
    global_arrays: Mapping[str, np.ndarray],
    updates: Iterable[Update],
    spec: AdapterSpec,
    config: FederationConfig,
    round: int,
    rng: np.random.Generator | None = None,
) -> RoundOutcome:
    """Screen the updates, then global + server_lr * mean(accepted deltas).

    Central mode (c) adds N(0, (sigma*C)^2) to the SUM of the clipped updates before
    dividing, here on the trusted server. With no accepted update the global is unchanged.
    """
    accepted, rejected = screen(updates, spec, config, round)
    current = {k: np.asarray(v, np.float32) for k, v in global_arrays.items()}
    outcome = RoundOutcome(arrays=current, rejected=rejected)
    if not accepted:
        LOG.warning("round %d: no acceptable update; the global adapter is unchanged", round)
        return outcome
    total = {name: np.zeros(shape, np.float64) for name, shape in spec.items()}
    for update in accepted:
        for name in spec:
            total[name] += update.arrays[name]
    if config.mode == "central" and config.noise_multiplier > 0:
        rng = rng if rng is not None else SecureGenerator()  # the trusted server's noise: the OS CSPRNG
        std = config.noise_multiplier * config.clip_norm
        total = {k: v + rng.normal(0.0, std, size=v.shape) for k, v in total.items()}
    step = config.server_lr / len(accepted)
    new = dict(current)
    for name in spec:
        new[name] = (current[name] + step * total[name]).astype(np.float32)
    LOG.info("round %d: aggregated %d update(s), rejected %d", round, len(accepted), len(rejected))
    return RoundOutcome(arrays=new, accepted=[u.header.device_id for u in accepted], rejected=rejected, changed=True)


@dataclass(frozen=True)
class PopulationSummary:
    """The server's user-level accounting: every device is covered by the same bound.

    Each round is one Gaussian release of a C-bounded per-user update with noise sigma*C,
    applied to a cohort sampled at rate q. Every device of the population, sampled or not, is
    covered by epsilon(sigma, q, rounds run): the bound a device's ledger reaches once it has
    charged every round (it charges the rounds it sat out when it is next sampled).
    """

    rounds: int
    sample_rate: float
    noise_multiplier: float
    delta: float
    epsilon: float
    accountant: str
    devices_seen: int
    participations: dict[str, int]
    declined: dict[str, str]
    rejected: list[Rejection]

    def to_dict(self) -> dict:
        return {
            "unit": "user",
            "rounds": self.rounds,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "accountant": self.accountant,
            "devices_seen": self.devices_seen,
            "participations": dict(self.participations),
            "declined": dict(self.declined),
            "rejected": [r.__dict__ for r in self.rejected],
        }


def user_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str = "pld") -> float:
    """User-level epsilon after `rounds` rounds (privacy's accountant; inf without noise)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from privacy.accountant import SubsampledGaussian, compute_epsilon

    mech = SubsampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds)
    return float(compute_epsilon([mech], delta=delta, accountant=accountant))
