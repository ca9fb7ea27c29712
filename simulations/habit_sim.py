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
(`federation.habit_round.run_scorer_federation`). After its rounds, the federation's usefulness
check (`federation.habit_check`, CHECK_SHARE of the scorer's epsilon, charged to the same ledgers)
decides whether the population keeps the scorer at all.

A device uses the shared weights only if the check kept them and it has more than FEW_EVENTS
training events; otherwise its own counts (`OWN_COUNTS`). That choice is
`personal.habit_predictor.owner_log_probs`, the very function `homebody suggest` ranks with
(`personal.predict.habit_probs`), so what is measured here is what a device's owner gets.

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

from personal.habit_predictor import FEW_EVENTS, OWN_COUNTS, owner_log_probs  # noqa: F401 - re-exported
from personal.habits import PREDICTORS, combined_scores  # noqa: F401 - PREDICTORS re-exported

if TYPE_CHECKING:
    from federation.config import FederationConfig
    from federation.habit_check import CheckResult, CheckRun
    from federation.habit_round import ScorerRun
    from simulations.devices import SimDevice
    from simulations.config import SimulationConfig

SEED_OFFSET = 2**32  # the scorer's seeded noise streams never coincide with the LoRA rounds' (seed, round, device)


@dataclass(frozen=True)
class ScorerPlan:
    """The scorer's federated run, its usefulness check, and their user-level releases (the prior of the LoRA rounds)."""

    config: "FederationConfig"
    run: "ScorerRun"
    epsilon: float | None  # its share of the run's user-level epsilon, check included (None: non-private)
    prior: tuple  # privacy.accountant.SubsampledGaussian releases every device is charged for
    check_config: "FederationConfig"
    check_run: "CheckRun"

    def to_json(self) -> dict:
        return {"rounds": self.run.rounds, "cohort": self.run.cohort, "clip_norm": self.config.clip_norm,
                "noise_multiplier": self.config.noise_multiplier, "epsilon_share": self.epsilon,
                "server_optimizer": self.run.server_optimizer, "run": self.run.run,
                "check_noise_multiplier": self.check_config.noise_multiplier}


@dataclass(frozen=True)
class ScorerOutcome:
    """The scorer's final shared weights, the check's verdict and each device's user-level epsilon."""

    weights: dict[str, np.ndarray]
    check: "CheckResult"
    spent: dict[str, float]

    @property
    def usable(self) -> dict[str, np.ndarray] | None:
        """The weights devices rank with: None when the check did not keep the scorer."""
        return self.weights if self.check.kept else None


def scorer_plan(cfg: "SimulationConfig", n_devices: int, run_id: str) -> ScorerPlan:
    """Noise for the scorer's share of the user-level epsilon (all of it with --predictor habit): the
    scorer's rounds at q = cohort / devices get 1 - CHECK_SHARE of it, the usefulness check the rest."""
    from federation.config import SCORER_LOCAL_LR, FederationConfig
    from federation.habit_check import CHECK_SHARE, CheckRun, check_config, check_noise
    from federation.habit_round import ScorerRun, scorer_noise
    from privacy.accountant import SubsampledGaussian
    from simulations.devices import GATE_ACCOUNTANT

    k = min(n_devices, cfg.scorer_cohort)
    q = k / n_devices
    eps = None if cfg.non_private else cfg.epsilon * cfg.scorer_epsilon_share
    sigma = 0.0 if eps is None else scorer_noise(eps * (1 - CHECK_SHARE), k, n_devices, cfg.scorer_rounds, cfg.delta,
                                                 accountant=GATE_ACCOUNTANT)
    config = FederationConfig(rounds=cfg.scorer_rounds, mode=cfg.federation_mode, clip_norm=cfg.scorer_clip,
                              noise_multiplier=sigma, delta=cfg.delta, local_epochs=1, local_lr=SCORER_LOCAL_LR,
                              secagg_min_devices=max(1, k), fraction_train=q, min_train_devices=min(2, k),
                              min_available_devices=min(2, n_devices))
    run = ScorerRun(rounds=cfg.scorer_rounds, cohort=k, run=f"{run_id}-habit-scorer", noise_seed=cfg.seed + SEED_OFFSET)
    scorer = SubsampledGaussian(sigma, q, cfg.scorer_rounds)
    check_sigma = 0.0 if eps is None else check_noise(eps, cfg.delta, (scorer,), GATE_ACCOUNTANT)
    check = check_config(check_sigma, n_devices, cfg.delta, cfg.federation_mode)
    check_run = CheckRun(run=f"{run_id}-habit-check", noise_seed=cfg.seed + 2 * SEED_OFFSET)
    prior = () if eps is None else (scorer, SubsampledGaussian(check_sigma, 1.0, 1))
    return ScorerPlan(config, run, eps, prior, check, check_run)


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
                 on_round=None) -> ScorerOutcome:
    """The federated scorer run over every device (its own vault gate each), then the usefulness check."""
    from federation.habit_check import run_check
    from federation.habit_round import run_scorer_federation
    from personal.habits import ScorerShape, initial_weights, training_batch

    shape = ScorerShape(tuple(labels))
    batches = {d.user: training_batch(d.habit_train, shape) for d in devices}
    gates = VaultGates(devices)
    try:
        weights, _ = run_scorer_federation(initial_weights(shape), batches, plan.config, plan.run,
                                           np.random.default_rng([cfg.seed, 1]), gates, on_round)
        check, spent = run_check({d.user: d.habit_train for d in devices}, labels, weights, plan.check_config,
                                 plan.check_run, np.random.default_rng([cfg.seed, 2]), gates)
    finally:
        gates.close()
    return ScorerOutcome(weights, check, spent)


def store_weights(devices: Sequence["SimDevice"], outcome: ScorerOutcome, labels: Sequence[str], run: str) -> None:
    """Each device keeps the scorer's final shared weights and the check's verdict in its vault, as a
    Flower device does (`federation.habit_clientapp.store_scorer`: what `suggest` reads; it ranks with
    the weights only if the check kept them)."""
    from federation.habit_clientapp import store_scorer

    for d in devices:
        with d.open_gate() as (vault, _gate):
            store_scorer(vault, d.user, outcome.weights, labels, run, outcome.spent.get(d.user), outcome.check.to_json())


def habit_log_probs(d: "SimDevice", labels: Sequence[str], weights: dict[str, np.ndarray] | None,
                    own: str = OWN_COUNTS) -> np.ndarray:
    """(held-out queries, labels) log-probabilities of the habit predictor, computed on the device.

    With the federation's shared `weights` (over `labels`, the shared vocabulary; None unless the
    usefulness check kept them): the scorer, unless the device has at most FEW_EVENTS training
    events. Otherwise its own counts (`own`: "best_counting", the per-owner choice of
    personal.evaluate, or "mix", the smoothed mix). A label a predictor cannot score gets its floor.
    """
    return owner_log_probs(d.habit_train, d.habit_queries, labels, weights, own)


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
