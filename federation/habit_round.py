"""The habit scorer's shared weights, learnt across devices with user-level DP-FedAvg.

A sibling of `federation.device.train_round` for the habit scorer (personal.habits): that round
trains and sends a LoRA adapter through torch; the scorer is a few hundred numbers computed in
numpy, so its round is its own function, with the same release path and the same wire:

  `train_scorer_round(weights, batch, config, device)`:
  1. budget check at user level through the device's ReleaseGate (declines when spent);
  2. a few gradient steps from the global weights on the device's own habit features;
  3. delta clipped to C, N(0, (device_sigma*C)^2) added ON the device (`build_update`), encoded,
     checked with `check_update` (names "w" and "b", shapes, finite, norm bound);
  4. the release committed to the device's ledger (unit "user"), charged exactly as train_round
     charges (`rounds_to_charge`, `settle_run`: every round of the run, sampled or not).

What leaves the device: the clipped, noised change of the shared weights and the public header,
nothing else; the habit statistics and features (`QueryBatch`) stay on it.

`ScorerServer` averages a cohort's updates (the sum carries sigma*C in "secagg" mode, as in the
fast engine) and takes a server step (momentum SGD by default, or Adam) with the mean as
pseudo-gradient: post-processing of the noised sum, so it costs no privacy. `run_scorer_federation` is the simulation loop: fixed-size
cohorts drawn uniformly (accounted at q = cohort / devices, as the fast engine does).

Randomness: every draw comes from an explicit generator handed in (DeviceRound.rng for a device's
noise, made by `federation.device.noise_rng`; `rng` for cohorts and central noise). A device's
noise is the OS CSPRNG unless the run asks for seeded noise (`ScorerRun.noise_seed`, simulations
only); the ledger record names which (`details["rng"]`) and a real device's gate refuses seeded
noise before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from federation.config import FederationConfig
from federation.device import MECHANISM, USER, DeviceRound, RoundResult, admit_round, settle_run
from federation.update import Arrays, build_update, check_update, decode, encode, spec_of
from privacy.randomness import OS_CSPRNG, SEEDED, rng_kind

if TYPE_CHECKING:
    from personal.habits import QueryBatch
    from privacy.budget import ReleaseGate

MODEL = "habit-scorer"


def train_scorer_round(weights: Mapping[str, np.ndarray], batch: "QueryBatch", config: FederationConfig,
                       device: DeviceRound | None = None) -> RoundResult:
    """One device's scorer round (see the module docstring). Raises DeviceDeclined when the budget is spent.

    `config.local_epochs` is the number of local gradient steps, `config.local_lr` their step size.
    """
    from personal.habits import local_update

    device = device or DeviceRound(device_id="device", round=1)
    private, charged, mech = admit_round(device, config)
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    delta = local_update(weights, batch, config.local_epochs, config.local_lr)
    return release(delta, spec_of(weights), config, device, MODEL, len(batch), admitted=(private, charged, mech))


def release(delta: Arrays, spec, config: FederationConfig, device: DeviceRound, model: str, num_examples: int,
            admitted: tuple | None = None) -> RoundResult:
    """Clip `delta` to C, noise it on the device, encode it and commit the release to the device's
    ledger (unit "user"): the release path of every numpy-computed device update (the habit
    scorer's rounds, its usefulness check). `admitted`: `admit_round`'s answer when the caller
    already asked it before doing the work (otherwise asked here)."""
    private, charged, mech = admitted or admit_round(device, config)
    noised, raw_norm = build_update(delta, spec, round=device.round, device_id=device.device_id, clip_norm=config.clip_norm,
                                    sigma=config.device_sigma, rng=device.rng, encoding=config.encoding, observe=device.observe)
    wire = encode(noised, device.rng)
    epsilon = None
    details = {"round": device.round, "run": device.run, "mode": config.mode, "model": model, "rng": rng_kind(device.rng)}
    if device.gate is not None and not private:
        device.gate.commit_non_private(device.profile, USER, wire.sha256(), details=details | {"federated": True})
        epsilon = float("inf")
    elif device.gate is not None:
        record = device.gate.commit(device.profile, USER, mech, artefact_sha256=wire.sha256(), mechanism=MECHANISM[config.mode],
                                    details=details | {"rounds_charged": charged, "clip_norm": config.clip_norm,
                                                       "device_sigma": config.device_sigma, "encoding": config.encoding})
        epsilon = float(record.epsilon)
    return RoundResult(decode(wire), wire, epsilon, raw_norm, num_examples)


@dataclass
class ScorerServer:
    """Global scorer weights and the server optimizer's state (all public: functions of noised sums)."""

    weights: dict[str, np.ndarray]
    config: FederationConfig
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8  # Adam's adaptivity floor; near the noise level it keeps noise-only coordinates still
    optimizer: str = "sgdm"  # "sgdm" or "adam" (server momentum beta1, no per-coordinate scaling)
    step: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def for_run(cls, weights: Mapping[str, np.ndarray], config: FederationConfig, run: "ScorerRun") -> "ScorerServer":
        """The server of one scorer run: a copy of the starting `weights`, the run's server optimizer."""
        return cls({k: np.asarray(v, np.float32).copy() for k, v in weights.items()}, config, lr=run.server_lr,
                   optimizer=run.server_optimizer, eps=run.server_eps)

    def aggregate(self, updates: list[Arrays], cohort_size: int, rng: np.random.Generator) -> None:
        """Sum the (checked) updates, average over the cohort size, one server step with minus the mean as gradient.

        `cohort_size` is the number sampled (public), not the number that answered, so a device
        that declined does not change the scale. "central" mode: the server adds sigma*C to the sum.
        """
        spec = spec_of(self.weights)
        total = {k: np.zeros(s, np.float64) for k, s in spec.items()}
        for arrays in updates:
            for k in total:
                total[k] += arrays[k]
        if self.config.mode == "central" and self.config.noise_multiplier > 0:
            total = {k: t + rng.normal(0.0, self.config.noise_multiplier * self.config.clip_norm, t.shape) for k, t in total.items()}
        self.step += 1
        for k, t in total.items():
            g = -t / max(1, cohort_size)
            self.m[k] = self.beta1 * self.m.get(k, 0.0) + (1 - self.beta1) * g
            if self.optimizer == "sgdm":
                self.weights[k] = (self.weights[k] - self.lr * self.m[k] / (1 - self.beta1**self.step)).astype(np.float32)
                continue
            self.v[k] = self.beta2 * self.v.get(k, 0.0) + (1 - self.beta2) * g * g
            m_hat = self.m[k] / (1 - self.beta1**self.step)
            v_hat = self.v[k] / (1 - self.beta2**self.step)
            self.weights[k] = (self.weights[k] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


@dataclass(frozen=True)
class ScorerRun:
    """One federated run of the scorer: who, how many rounds, cohort size, the run's name."""

    rounds: int
    cohort: int
    run: str = "habit-scorer"
    server_lr: float = 1.0
    server_optimizer: str = "sgdm"  # chosen on training-event validation splits (Adam let noise-only coordinates wander)
    server_eps: float = 1e-8
    noise_seed: int | None = None  # seeded device noise (simulations only); None draws OS entropy


def scorer_noise(epsilon: float, cohort: int, devices: int, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Noise multiplier so that `rounds` rounds at q = cohort / devices cost `epsilon` at user level."""
    from privacy.accountant import noise_for_epsilon

    return float(noise_for_epsilon(epsilon * 0.999, min(1.0, cohort / devices), rounds, delta, accountant=accountant))


def run_scorer_federation(
    weights: Mapping[str, np.ndarray],
    batches: Mapping[str, "QueryBatch"],
    config: FederationConfig,
    run: ScorerRun,
    rng: np.random.Generator,
    gates: Mapping[str, "ReleaseGate"] | None = None,
    on_round: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """DP-FedAvg of the scorer over `batches` (one per device). Returns (final weights, epsilon per device).

    Every device is charged every round (settled at the end) when `gates` are given; a device
    whose budget is spent declines and sends nothing.
    """
    from federation.device import DeviceDeclined, noise_rng

    users = sorted(batches)
    server = ScorerServer.for_run(weights, config, run)
    k = min(run.cohort, len(users))
    q = k / len(users)
    spec = spec_of(server.weights)
    last_sha: dict[str, str] = {}
    declined: set[str] = set()
    for r in range(1, run.rounds + 1):
        cohort = draw_cohort(rng, len(users), k)
        updates = []
        for i in cohort:
            u = users[i]
            dev = DeviceRound(u, r, sample_rate=q, gate=gates.get(u) if gates else None, profile=u,
                              rng=noise_rng(run.noise_seed, r, i),
                              run=run.run)
            try:
                res = train_scorer_round(server.weights, batches[u], config, dev)
            except DeviceDeclined:
                declined.add(u)
                continue
            check_update(res.update, spec, config.clip_norm, sigma=config.device_sigma)  # the server's own check
            updates.append(res.update.arrays)
            last_sha[u] = res.wire.sha256()
        server.aggregate(updates, k, rng)
        if on_round is not None:
            on_round(r, server.weights)
    return server.weights, _settle_all(users, gates, config, run, q, last_sha, declined)


def draw_cohort(rng, devices: int, size: int) -> list[int]:
    """A round's cohort: `size` distinct indices of the (sorted) devices, drawn uniformly by `rng`
    (a seeded numpy generator in simulations; the OS CSPRNG, `SecureGenerator`, otherwise)."""
    if hasattr(rng, "choice"):
        return [int(i) for i in sorted(rng.choice(devices, size=size, replace=False))]
    import random

    return sorted(random.SystemRandom().sample(range(devices), size))


def _settle_all(users, gates, config: FederationConfig, run: ScorerRun, q: float, last_sha: dict[str, str],
                declined: set[str]) -> dict[str, float]:
    """Charge every device the rounds after its last participation (never one that declined, as the
    fast engine does); its user-level epsilon."""
    if not gates:
        return {}
    return {u: settle_scorer(gates[u], u, config, run, q, last_sha.get(u), u in declined) for u in users}


def settle_scorer(gate: "ReleaseGate", profile: str, config: FederationConfig, run: ScorerRun, q: float,
                  last_sha: str | None, declined: bool) -> float:
    """One device's settlement of a scorer run (`settle_run`; nothing for a device that declined or
    a non-private run). `last_sha`: the SHA-256 of its last update (None: never sampled). Its user-level epsilon."""
    if config.noise_multiplier > 0 and not declined:
        return settle_run(gate, profile, run.run, run.rounds, config, q, last_sha or "0" * 64,
                          rng=OS_CSPRNG if run.noise_seed is None else SEEDED)
    return float(gate.spent(profile, USER)) if last_sha is not None else 0.0
