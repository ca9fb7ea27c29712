"""The habit scorer inside `homebody simulate` (fast engine): its DP-FedAvg run, its share of the
budget, and how its scores combine with the LoRA model's.

Federated mode: before the LoRA rounds, the population learns the habit scorer's shared weights
(personal.habits, a handful of feature weights and a bias per shared event) with
`federation.habit_round.run_scorer_federation`: user-level DP-FedAvg, every release checked and
committed by the device's own vault gate. The run's user-level epsilon is SPLIT: the scorer's noise
is calibrated for `scorer_share * epsilon` over its rounds (`ScorerPlan`), then the LoRA rounds'
noise is calibrated for the whole epsilon with the scorer's release as a prior
(`privacy.accountant.noise_for_epsilon(prior=...)`), so the composition of both on every
device's ledger is at most the run's epsilon.

Local mode: no release; each device scores candidates with its own counts (the smoothed mix of
personal.evaluate, what `suggest_from_habits` does without shared weights).

The combined prediction: log softmax of the habit scores plus `combine_weight` times the LoRA
model's log-probability, over the shared vocabulary (federated) or the owner's labels (local).
The weight is FIXED a priori (1.0: the product of the two distributions), not learnt and not tuned
on held-out events.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from federation.config import FederationConfig
    from federation.habit_round import ScorerRun
    from simulations.devices import SimDevice
    from simulations.config import SimulationConfig

PREDICTORS = ("combined", "habit", "lora")
SEED_OFFSET = 2**32  # the scorer's seeded noise streams never coincide with the LoRA rounds' (seed, round, device)
FLOOR = 30.0  # a candidate a predictor cannot score sits this far (in log-probability) below its worst one


@dataclass(frozen=True)
class ScorerPlan:
    """The scorer's federated run and its user-level release (the prior of the LoRA rounds)."""

    config: "FederationConfig"
    run: "ScorerRun"
    epsilon: float | None  # its share of the run's user-level epsilon (None: non-private)
    prior: tuple  # privacy.accountant.SubsampledGaussian releases every device is charged for

    def to_json(self) -> dict:
        return {"rounds": self.run.rounds, "cohort": self.run.cohort, "clip_norm": self.config.clip_norm,
                "noise_multiplier": self.config.noise_multiplier, "epsilon_share": self.epsilon,
                "server_optimizer": self.run.server_optimizer, "run": self.run.run}


def scorer_plan(cfg: "SimulationConfig", n_devices: int, run_id: str) -> ScorerPlan:
    """Noise for the scorer's `scorer_share` of the user-level epsilon over its rounds at q = cohort / devices."""
    from federation.config import FederationConfig
    from federation.habit_round import ScorerRun, scorer_noise
    from privacy.accountant import SubsampledGaussian
    from simulations.devices import GATE_ACCOUNTANT

    k = min(n_devices, cfg.scorer_cohort)
    q = k / n_devices
    eps = None if cfg.non_private else cfg.epsilon * cfg.scorer_share
    sigma = 0.0 if eps is None else scorer_noise(eps, k, n_devices, cfg.scorer_rounds, cfg.delta, accountant=GATE_ACCOUNTANT)
    config = FederationConfig(rounds=cfg.scorer_rounds, mode=cfg.federation_mode, clip_norm=cfg.scorer_clip,
                              noise_multiplier=sigma, delta=cfg.delta, local_epochs=1, local_lr=1.0,
                              secagg_min_devices=max(1, k), fraction_train=q, min_train_devices=min(2, k),
                              min_available_devices=min(2, n_devices))
    run = ScorerRun(rounds=cfg.scorer_rounds, cohort=k, run=f"{run_id}-habit-scorer", noise_seed=cfg.seed + SEED_OFFSET)
    prior = () if eps is None else (SubsampledGaussian(sigma, q, cfg.scorer_rounds),)
    return ScorerPlan(config, run, eps, prior)


class VaultGates(Mapping):
    """Each device's ReleaseGate, its vault opened on access (a few kept open, the oldest closed).

    `run_scorer_federation` uses a gate right after taking it, so a small window is enough and the
    number of open files stays flat in the number of devices.
    """

    def __init__(self, devices: Sequence["SimDevice"], keep: int = 8) -> None:
        self.devices = {d.user: d for d in devices}
        self.keep = keep
        self._open: OrderedDict[str, tuple] = OrderedDict()

    def __getitem__(self, user: str):
        if user not in self._open:
            ctx = self.devices[user].open_gate()
            self._open[user] = (ctx, ctx.__enter__()[1])
            while len(self._open) > self.keep:
                self._open.popitem(last=False)[1][0].__exit__(None, None, None)
        self._open.move_to_end(user)
        return self._open[user][1]

    def __iter__(self):
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def close(self) -> None:
        """Close every vault still open."""
        while self._open:
            self._open.popitem(last=False)[1][0].__exit__(None, None, None)


def train_scorer(cfg: "SimulationConfig", plan: ScorerPlan, devices: Sequence["SimDevice"], labels: Sequence[str],
                 on_round=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The federated scorer run over every device (its own vault gate each). Returns (weights, epsilon per device)."""
    from federation.habit_round import run_scorer_federation
    from personal.habits import ScorerShape, initial_weights, training_batch

    shape = ScorerShape(tuple(labels))
    batches = {d.user: training_batch(d.habit_train, shape) for d in devices}
    gates = VaultGates(devices)
    try:
        return run_scorer_federation(initial_weights(shape), batches, plan.config, plan.run,
                                     np.random.default_rng([cfg.seed, 1]), gates, on_round)
    finally:
        gates.close()


def store_weights(devices: Sequence["SimDevice"], weights: dict[str, np.ndarray], labels: Sequence[str],
                  spent: dict[str, float], run: str) -> None:
    """Each device keeps the scorer's final shared weights in its vault (what `suggest --habits` reads)."""
    import math

    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes

    data = weights_to_bytes(weights, labels)
    for d in devices:
        eps = spent.get(d.user)
        with d.open_gate() as (vault, _gate):
            vault.put_artefact(d.user, ARTEFACT_KIND, ARTEFACT_NAME, data,
                               {"run": run, "epsilon": eps if eps is not None and math.isfinite(eps) else None})


def habit_log_probs(d: "SimDevice", labels: Sequence[str], weights: dict[str, np.ndarray] | None) -> np.ndarray:
    """(held-out queries, labels) log-probabilities of the habit predictor, computed on the device.

    With the federation's shared `weights` (over `labels`, the shared vocabulary): the scorer, unless
    the device's own counts (smoothed mix) did better on the last 20% of its TRAINING events
    (`prefers_scorer`: a small or very noisy federation must not make a device worse than counting).
    Without weights: its own counts. A label a predictor cannot score gets its floor.
    """
    labels = list(labels)
    if not d.habit_queries:
        return np.zeros((0, len(labels)))
    if weights is not None and prefers_scorer(d.habit_train, labels, weights):
        z, names = _scorer_logits(d.habit_train, d.habit_queries, labels, weights)
    else:
        z, names = _mix_logits(d.habit_train, d.habit_queries)
        if not names:
            return np.zeros((len(d.habit_queries), len(labels)))
    z = z - z.max(axis=1, keepdims=True)
    z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    pos = {n: i for i, n in enumerate(names)}
    out = np.full((len(z), len(labels)), np.nan)
    for j, name in enumerate(labels):
        if name in pos:
            out[:, j] = z[:, pos[name]]
    return _floor(out)


def _scorer_logits(train: list, queries: list, labels: Sequence[str], weights) -> tuple[np.ndarray, list[str]]:
    from personal.habits import ScorerShape, logits, query_batch

    batch = query_batch(train, queries, ScorerShape(tuple(labels)))
    return logits(weights, batch), list(batch.candidates)


def _mix_logits(train: list, queries: list) -> tuple[np.ndarray, list[str]]:
    """log of the smoothed mix of the owner's own shares (personal.evaluate.SmoothedMix's score)."""
    from personal.habits import HabitStats, habit_features

    stats = HabitStats.from_events(train)
    names = list(stats.vocab)
    if not names:
        return np.zeros((len(queries), 0)), names
    rows = [np.log(np.exp(habit_features(stats, q.history, q.target.timestamp)[0][:, [0, 1, 4, 5]]).mean(axis=1))
            for q in queries]
    return np.stack(rows), names


def prefers_scorer(train: list, labels: Sequence[str], weights) -> bool:
    """On the device: does the shared scorer beat its own counts on the last 20% of its training events?

    Fit on the first 80%, top-1 then top-5 on the rest; a tie keeps the scorer. Held-out events are
    never looked at (the scorer's weights were learnt with these training events among all others, under DP).
    """
    from personal.evaluate import chronological_split, topk

    fit, val = chronological_split(train, 0.2)
    if not fit or not val:
        return True
    truths = [q.target.event for q in val]
    scores = []
    for z, names in (_scorer_logits(fit, val, labels, weights), _mix_logits(fit, val)):
        order = np.argsort(-z, axis=1, kind="stable")[:, :5] if names else np.zeros((len(val), 0), int)
        s = topk([[names[j] for j in row] for row in order], truths)
        scores.append((s["top1"], s["top5"]))
    return scores[0] >= scores[1]


def _floor(scores: np.ndarray) -> np.ndarray:
    """Replace unscored (nan) entries by FLOOR below the row's lowest score."""
    if scores.size == 0 or not np.isnan(scores).any():
        return scores
    low = np.nanmin(np.where(np.isnan(scores), np.inf, scores), axis=1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0.0)
    return np.where(np.isnan(scores), low - FLOOR, scores)


def combined_scores(habit: np.ndarray, lora_probs: np.ndarray, weight: float) -> np.ndarray:
    """habit log-probabilities + weight * the LoRA model's log-probabilities (same label order)."""
    return habit + weight * np.log(np.clip(lora_probs, 1e-12, None))


def predictor_hits(habit: np.ndarray, lora_probs: np.ndarray, labels: Sequence[str], targets: Sequence[str],
                   weight: float, ks: Sequence[int] = (1, 5)) -> dict[str, dict[int, list[bool]]]:
    """Per predictor (habit, lora, combined) and k: is each target among the k best labels?"""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(t, -1) for t in targets])
    out = {}
    for name, scores in (("habit", habit), ("lora", lora_probs), ("combined", combined_scores(habit, lora_probs, weight))):
        order = np.argsort(-scores, axis=1, kind="stable")
        out[name] = {k: [bool(t >= 0 and t in row[:k]) for t, row in zip(truth, order)] for k in ks}
    return out


def metrics(hits: dict[str, dict[int, list[bool]]], predictor: str) -> dict[str, float]:
    """top-1/top-5 per predictor, as "<name>_top1" etc., and "top1"/"top5" of the default `predictor`."""
    out = {}
    for name, by_k in hits.items():
        for k, h in by_k.items():
            out[f"{name}_top{k}"] = float(np.mean(h)) if h else 0.0
    out["top1"], out["top5"] = out[f"{predictor}_top1"], out[f"{predictor}_top5"]
    return out
