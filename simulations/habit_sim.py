"""The habit scorer inside `homebody simulate` (fast engine): its DP-FedAvg run, its share of the
budget, and how its scores combine with the LoRA model's.

The three predictors (`--predictor`, a true ablation: what is not used is not trained):
- "habit": count features only. Federated: the scorer's shared weights learnt with user-level
  DP-FedAvg for the WHOLE user-level epsilon; no LoRA round and no personal fine-tune run.
  Local: each device's own counts, nothing trained, nothing released.
- "lora": the LoRA model only. No scorer run; the LoRA rounds get the whole epsilon.
- "combined": both. The run's user-level epsilon is SPLIT: the scorer's noise is calibrated for
  `scorer_share * epsilon` over its rounds (`ScorerPlan`), then the LoRA rounds' noise for the
  whole epsilon with the scorer's release as a prior (`privacy.accountant.noise_for_epsilon(prior=...)`),
  so the composition of both on every device's ledger is at most the run's epsilon.
Every scorer release is checked and committed by the device's own vault gate
(`federation.habit_round.run_scorer_federation`).

A device with shared weights uses the scorer unless its own counts (`OWN_COUNTS`) did better on the
last 20% of its TRAINING events; without weights it uses its own counts.

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
# The counts a device falls back to (and must be beaten by the shared scorer on its own training
# events): chosen on the foursquare-nyc --validation split only (docs/BENCHMARKS.md).
OWN_COUNTS = "best_counting"
FEW_EVENTS = 16  # a device with at most this many training events uses its own counts (too few to compare on)


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
    """Noise for the scorer's share of the user-level epsilon (all of it with --predictor habit) over its
    rounds at q = cohort / devices."""
    from federation.config import FederationConfig
    from federation.habit_round import ScorerRun, scorer_noise
    from privacy.accountant import SubsampledGaussian
    from simulations.devices import GATE_ACCOUNTANT

    k = min(n_devices, cfg.scorer_cohort)
    q = k / n_devices
    eps = None if cfg.non_private else cfg.epsilon * cfg.scorer_epsilon_share
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


def habit_log_probs(d: "SimDevice", labels: Sequence[str], weights: dict[str, np.ndarray] | None,
                    own: str = OWN_COUNTS) -> np.ndarray:
    """(held-out queries, labels) log-probabilities of the habit predictor, computed on the device.

    With the federation's shared `weights` (over `labels`, the shared vocabulary): the scorer, unless
    the device has at most FEW_EVENTS training events or its own counts did better on the last 20%
    of them (`prefers_scorer`: a small or very noisy federation must not make a device worse than
    counting). Without weights, or when counting won: its own counts (`own`: "best_counting", the per-owner choice of
    personal.evaluate, or "mix", the smoothed mix). A label a predictor cannot score gets its floor.
    """
    return owner_log_probs(d.habit_train, d.habit_queries, labels, weights, own)


def owner_log_probs(train: list, queries: list, labels: Sequence[str], weights: dict[str, np.ndarray] | None,
                    own: str = OWN_COUNTS, few: int = FEW_EVENTS) -> np.ndarray:
    """`habit_log_probs` for one owner's training events and queries (personal.evaluate.Query)."""
    labels = list(labels)
    if not queries:
        return np.zeros((0, len(labels)))
    if weights is not None and len(train) > few and prefers_scorer(train, labels, weights, own):
        z, names = _scorer_logits(train, queries, labels, weights)
    else:
        z, names = counting_logits(train, queries, own)
        if not names:
            return np.zeros((len(queries), len(labels)))
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


def counting_logits(train: list, queries: list, own: str = OWN_COUNTS) -> tuple[np.ndarray, list[str]]:
    """Scores of the owner's own counting predictor over its own events.

    "mix": the smoothed mix's log-share. "best_counting" (or "best_choice"): the predictor
    personal.evaluate chooses for this owner on its training events; the mix keeps its log-shares, the others (rankings only) score
    minus the rank, so any ranking is reproduced exactly (ties by name, as the baselines break them).
    """
    from personal.evaluate import COUNTING, choose_counting

    choice = "mix" if own == "mix" else choose_counting(train)  # best_counting and best_choice: the same fallback
    if choice == "mix":
        return _mix_logits(train, queries)
    model = COUNTING[choice](train)
    names = sorted({e.event for e in train})
    pos = {n: i for i, n in enumerate(names)}
    z = np.full((len(queries), len(names)), -float(len(names)))
    for i, q in enumerate(queries):
        for rank, name in enumerate(model.rank(q)):
            z[i, pos[name]] = -float(rank)
    return z, names


def prefers_scorer(train: list, labels: Sequence[str], weights, own: str = OWN_COUNTS) -> bool:
    """On the device: does the shared scorer beat its own counts on the last 20% of its training events?

    Fit on the first 80%, top-1 then top-5 on the rest; a tie keeps the scorer. The counts it must
    beat there: "best_counting", personal.evaluate's per-owner procedure fit on the first 80% (its
    choice made inside them, so its score on the rest is out of sample, like the scorer's);
    "best_choice", the best of the five counting predictors on exactly these events (an in-sample
    maximum: optimistic); "mix", the smoothed mix. Held-out events are never looked at (the
    scorer's weights were learnt with these training events among all others, under DP).
    """
    from personal.evaluate import BestCounting, chronological_split, counting_scores, topk

    fit, val = chronological_split(train, 0.2)
    if not fit or not val:
        return True
    truths = [q.target.event for q in val]
    if own == "best_counting":  # the per-owner procedure itself, its choice made on `fit` alone
        best = BestCounting(fit)
        floor = tuple(topk([best.rank(q) for q in val], truths).values())
    else:
        counting = counting_scores(train)
        floor = counting["mix"] if own == "mix" else max(counting.values())
    z, names = _scorer_logits(fit, val, labels, weights)
    order = np.argsort(-z, axis=1, kind="stable")[:, :5]
    s = topk([[names[j] for j in row] for row in order], truths)
    return (s["top1"], s["top5"]) >= floor


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


def predictor_hits(habit: np.ndarray, lora_probs: np.ndarray | None, labels: Sequence[str], targets: Sequence[str],
                   weight: float, ks: Sequence[int] = (1, 5)) -> dict[str, dict[int, list[bool]]]:
    """Per predictor (habit, lora, combined; habit only without a LoRA model) and k: is each target among the k best?"""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(t, -1) for t in targets])
    out = {}
    scored = [("habit", habit)] if lora_probs is None else [
        ("habit", habit), ("lora", lora_probs), ("combined", combined_scores(habit, lora_probs, weight))]
    for name, scores in scored:
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
