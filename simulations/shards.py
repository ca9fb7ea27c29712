"""One shard of the fast engine: the devices one worker trains, on that worker's one shared base.

A `DeviceShard` holds the frozen base (loaded and LoRA-wrapped once), its feature cache, and the
devices it was given (each device lives on exactly one shard for the whole run, so no two workers
ever open the same vault). Its methods do what one device does in a round, for a list of devices:

- `train`: `federation.device.train_round` through the device's own vault gate (federated);
- `evaluate`: `federation.device.evaluate_device` on the global adapter (federated);
- `local`: `local_epochs` more DP-SGD passes on the device's own adapter (local mode);
- `personal_hits`: the planted-routine check.

They return plain `DeviceOutcome`s (update, epsilon, metrics), which the engine merges in cohort
order and aggregates exactly as a single process would. `simulations.workers` runs shards in this
process, in worker processes or as Ray actors; nothing here knows which.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from privacy.randomness import SEEDED
from simulations.config import SimulationConfig
from simulations.devices import FeatureCache, SimDevice, attach_feature_cache, encode_all, quantized_rate

MAX_LENGTH = 64  # personal.training.TrainConfig's default, which train_round and evaluate_device use


@lru_cache(maxsize=1024)
def calibrated_noise(epsilon: float, sample_rate: float, steps: int, delta: float, prior: tuple = ()) -> float:
    """Noise multiplier so that `steps` releases at sample rate q, after the `prior` ones, cost
    `epsilon` with the gates' accountant: user level for federated rounds (q = cohort rate), record
    level for local DP-SGD steps."""
    from privacy.accountant import noise_for_epsilon
    from simulations.devices import GATE_ACCOUNTANT

    return float(noise_for_epsilon(epsilon * 0.999, sample_rate, steps, delta, accountant=GATE_ACCOUNTANT, prior=prior))


@dataclass
class ShardSetup:
    """Everything a worker needs to build its shard (sent once, pickled)."""

    cfg: SimulationConfig
    fcfg: object  # federation.config.FederationConfig
    labels: list[str]
    cache_dir: str
    run_id: str


@dataclass
class DeviceOutcome:
    """What one device's work in a round produced, as the engine needs it back."""

    user: str
    update: object = None  # federated: the decoded update the server aggregates
    bytes_up: int = 0
    epsilon: float | None = None
    declined: str | None = None
    trained: bool = False  # took part (a release, or a non-private round)
    metrics: dict | None = None  # an evaluation's numbers
    train_s: float = 0.0
    examples: int = 0


@dataclass
class ShardStats:
    """A shard's counters: seconds encoding, feature-cache hits and misses, and where it runs."""

    encode_s: float = 0.0
    hits: int = 0
    misses: int = 0
    node: str = ""


def _node() -> str:
    """The Ray node this shard runs on (an actor), else "local"."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return "local"


class DeviceShard:
    """The devices one worker owns, trained on one shared base with one feature cache."""

    def __init__(self, setup: ShardSetup, cache: FeatureCache | None = None) -> None:
        import torch

        from federation.device import lora_settings, shared_base
        from personal.training import wrap

        torch.set_num_threads(setup.cfg.threads)
        self.cfg, self.fcfg, self.labels, self.run_id = setup.cfg, setup.fcfg, list(setup.labels), setup.run_id
        self.base = shared_base(self.cfg.model, self.fcfg.lora_r)
        self.pm = wrap(self.base, lora_settings(self.fcfg))
        self.own_cache = cache is None  # a caller's shared cache outlives the run: its files stay
        self.cache = cache if cache is not None else FeatureCache(Path(setup.cache_dir))
        attach_feature_cache(self.pm, self.cache)
        self.devices: dict[str, SimDevice] = {}
        self.adapters: dict = {}  # local mode: each device's own adapter between rounds
        self.scorer_weights: dict | None = None
        self.scorer_done = False  # the engine has handed over the scorer's outcome (weights, or None: not kept)
        self.encode_s = 0.0

    def ready(self) -> bool:
        """True once the base is loaded (a worker answers only after its constructor ran)."""
        return True

    def initial_adapter(self):
        """The federation's starting global adapter (`federation.device.initial_adapter`) on this shard's base."""
        from federation.device import initial_adapter

        return initial_adapter(self.base, self.labels, self.fcfg)

    def add(self, devices: Sequence[SimDevice]) -> None:
        """Take these devices on (they stay on this shard for the whole run)."""
        self.devices.update({d.user: d for d in devices})

    def set_scorer(self, weights: dict | None) -> None:
        """The habit scorer's shared weights (federated) once the engine has learnt them; None when
        the usefulness check did not keep them (every device then uses its own counts)."""
        self.scorer_weights, self.scorer_done = weights, True

    def encode(self, groups: Sequence[Sequence[str]]) -> None:
        """Encode each group's devices' train and test texts through the frozen layers, one batch set
        per group. The engine plans the groups the same way for any number of workers, so each
        device's features are computed from the same batches, whatever the sharding."""
        ts = time.perf_counter()
        for users in groups:
            lists = []
            for d in (self.devices[u] for u in users):
                lists.append([e.text for e in d.train if e.label is not None])
                lists.append([e.text for e in d.test if e.label is not None])
            encode_all(self.pm, lists, MAX_LENGTH, chunk=1 << 30)
        self.encode_s += time.perf_counter() - ts

    def stats(self) -> ShardStats:
        """This shard's counters so far."""
        return ShardStats(self.encode_s, self.cache.hits, self.cache.misses, _node())

    # -- federated ------------------------------------------------------------------------
    def train(self, users: Sequence[str], r: int, q: float, global_adapter, streams: Sequence[int]) -> list[DeviceOutcome]:
        """Each device's federated round (`train_round`) through its own vault's gate."""
        from federation.device import DeviceDeclined, DeviceRound, noise_rng, train_round

        out = []
        for user, stream in zip(users, streams):
            d, res_out = self.devices[user], DeviceOutcome(user)
            with d.open_gate() as (_vault, gate):
                ctx = DeviceRound(d.user, r, q, None if self.cfg.non_private else gate, d.user,
                                  noise_rng(self.cfg.seed, r, stream), seed=self.cfg.seed + r, run=self.run_id)
                ts = time.perf_counter()
                try:
                    res = train_round(self.base, global_adapter, d.train, self.fcfg, ctx)
                except DeviceDeclined as exc:
                    out.append(DeviceOutcome(user, declined=exc.reason))
                    continue
                res_out.train_s = time.perf_counter() - ts
                if self.cfg.non_private:
                    gate.commit_non_private(d.user, "user", res.wire.sha256(),
                                            details={"round": r, "mode": "simulation", "non_private": True})
                    res_out.epsilon = math.inf
                else:
                    res_out.epsilon = float(res.epsilon if res.epsilon is not None else gate.spent(d.user, "user"))
            res_out.update, res_out.bytes_up, res_out.trained = res.update, res.bytes_up, True
            res_out.examples = len(d.train) * self.fcfg.local_epochs
            out.append(res_out)
        return out

    def evaluate(self, users: Sequence[str], r: int, global_adapter) -> list[DeviceOutcome]:
        """Each device scores the global adapter and its personalised fine-tune of it."""
        from federation.device import evaluate_device

        out = []
        for user in users:
            d, ts, probs = self.devices[user], time.perf_counter(), {}
            m = evaluate_device(self.base, global_adapter, d.train, d.test, self.fcfg, seed=self.cfg.seed + r,
                                probs_out=probs)
            m |= self._with_habits(d, global_adapter.labels, probs.get("personal"), m)
            out.append(DeviceOutcome(user, metrics=m, train_s=time.perf_counter() - ts,
                                     examples=len(d.train) * self.fcfg.personal_epochs))
        return out

    # -- local only -----------------------------------------------------------------------
    def local(self, users: Sequence[str], r: int) -> list[DeviceOutcome]:
        """Local mode: each device trains its own adapter further and scores it on its held-out events."""
        from federation.device import topk_accuracy

        out = []
        for user in users:
            d = self.devices[user]
            labels = sorted({e.label for e in d.train if e.label is not None})
            test = [e for e in d.test if e.label is not None]
            if not labels or not test:
                out.append(DeviceOutcome(user))
                continue
            ts = time.perf_counter()
            res = self._local_train(d, labels, r)
            res.train_s = time.perf_counter() - ts
            self.pm.load_adapter(self.adapters[user])
            probs = self.pm.predict_proba([e.text for e in test], max_length=MAX_LENGTH)
            targets = [e.label for e in test]
            m = {"top1": topk_accuracy(probs, labels, targets, 1), "top5": topk_accuracy(probs, labels, targets, 5),
                 "num-test": float(len(test))}
            res.metrics = m | self._with_habits(d, labels, probs, m)
            out.append(res)
        return out

    def _local_train(self, d: SimDevice, labels: list[str], r: int) -> DeviceOutcome:
        """`local_epochs` more DP-SGD passes over the device's own events: one record-level release."""
        from personal.training import DPConfig, MechanismPlan, TrainConfig, train_adapter

        train = [e for e in d.train if e.label is not None]
        init = self.adapters.get(d.user)
        tcfg = TrainConfig(lora=self.pm.lora, epochs=self.cfg.local_epochs, batch_size=self.cfg.batch_size,
                           lr=self.cfg.learning_rate, max_length=MAX_LENGTH, seed=self.cfg.seed + r)
        with d.open_gate() as (vault, gate):
            if self.cfg.non_private:
                res = train_adapter(self.base, train, labels, tcfg, DPConfig.non_private(), init=init)
                gate.commit_non_private(d.user, "record", res.adapter.sha256(), details={"round": r, "mode": "simulation"})
                epsilon = math.inf
            else:
                q = quantized_rate(self.cfg.batch_size, len(train))
                per_round = max(1, math.ceil(self.cfg.local_epochs / q))
                z = calibrated_noise(self.cfg.epsilon, q, per_round * self.cfg.rounds, self.cfg.delta)
                start, end = per_round * (r - 1), per_round * r
                plan = MechanismPlan(noise_multiplier=z, sample_rate=q, steps=end, delta=self.cfg.delta, epsilon=None)
                step_plan = MechanismPlan(z, q, per_round, self.cfg.delta, None)
                gate.check(d.user, "record", step_plan.mechanism())
                # Seeded on purpose: a simulation must be reproducible (recorded as such in the ledger).
                res = train_adapter(self.base, train, labels, tcfg, DPConfig(noise_multiplier=z, delta=self.cfg.delta,
                                    max_grad_norm=self.cfg.clip_norm, rng=SEEDED), init=init, start_step=start,
                                    plan=plan)
                gate.commit(d.user, "record", step_plan.mechanism(), artefact_sha256=res.adapter.sha256(),
                            mechanism="dp-sgd", details={"round": r, "mode": "simulation", "steps": per_round,
                                                         "rng": SEEDED})
                epsilon = gate.spent(d.user, "record")
            vault.put_artefact(d.user, "adapter", "simulation-local", res.adapter.to_bytes(),
                               {"round": r, "epsilon": None if math.isinf(epsilon) else epsilon})
        self.adapters[d.user] = res.adapter
        return DeviceOutcome(d.user, epsilon=epsilon, trained=True, examples=len(train) * self.cfg.local_epochs)

    # -- predictors -----------------------------------------------------------------------
    def _hits(self, d: SimDevice, labels: Sequence[str], probs) -> dict | None:
        """Per predictor (habit, lora, combined): top-1/top-5 hits on the device's held-out events."""
        from simulations.habit_sim import habit_log_probs, predictor_hits

        test = [e for e in d.test if e.label is not None]
        if (probs is None and self.cfg.trains_lora) or not test or len(d.habit_queries) != len(test):
            return None
        runs_scorer = self.cfg.mode == "federated" and self.cfg.habit_scorer and self.cfg.predictor != "lora"
        if runs_scorer and not self.scorer_done:
            return None  # the scorer has not run (an engine driven without train_scorer)
        habit = habit_log_probs(d, labels, self.scorer_weights if runs_scorer else None)
        return predictor_hits(habit, probs, labels, [e.label for e in test], self.cfg.combine_weight)

    def _with_habits(self, d: SimDevice, labels: Sequence[str], probs, m: dict) -> dict:
        """The LoRA model's numbers kept as lora_top1/5; top1/top5 become the configured predictor's."""
        from simulations.habit_sim import metrics

        hits = self._hits(d, labels, probs)
        if hits is None:
            return {"lora_top1": m.get("top1"), "lora_top5": m.get("top5")}
        return metrics(hits, self.cfg.predictor)

    def habits(self, users: Sequence[str]) -> list[DeviceOutcome]:
        """--predictor habit: each device's habit prediction on its held-out events, nothing trained."""
        out = []
        for user in users:
            d = self.devices[user]
            labels = self.labels if self.cfg.mode == "federated" else sorted({e.label for e in d.train if e.label})
            out.append(DeviceOutcome(user, metrics=self._with_habits(d, labels, None, {})))
        return out

    def personal_hits(self, user: str, global_adapter) -> dict[str, list[bool]]:
        """Per held-out example: is each predictor's top-1 right? (planted-routine check)

        "personalized" is the configured predictor; federated: the fine-tune `evaluate_device` does
        from the final global adapter; local: the device's own adapter.
        """
        from federation.device import train_config
        from personal.training import DPConfig, train_adapter

        d = self.devices[user]
        test = [e for e in d.test if e.label is not None]
        if not self.cfg.trains_lora:
            hits = self._hits(d, self.labels if self.cfg.mode == "federated" else sorted({e.label for e in d.train if e.label}), None)
            return {"personalized": hits["habit"][1], "habit": hits["habit"][1]} if hits else {"personalized": [False] * len(test)}
        if self.cfg.mode == "federated":
            usable = [e for e in d.train if e.label in set(self.labels)]
            adapter = global_adapter
            if self.fcfg.personal_epochs > 0 and usable:
                adapter = train_adapter(self.base, usable, self.labels, train_config(self.fcfg, self.fcfg.personal_epochs,
                                        self.cfg.seed + self.cfg.rounds), DPConfig.non_private(), init=adapter).adapter
        else:
            adapter = self.adapters.get(user)
            if adapter is None:
                return {"personalized": [False] * len(test)}
        self.pm.load_adapter(adapter)
        probs = self.pm.predict_proba([e.text for e in test], max_length=MAX_LENGTH)
        best = np.argmax(probs, axis=1)
        lora = [adapter.labels[i] == e.label for i, e in zip(best, test)]
        hits = self._hits(d, adapter.labels, probs)
        if hits is None:
            return {"personalized": lora, "lora": lora}
        out = {name: by_k[1] for name, by_k in hits.items()}
        return out | {"personalized": out[self.cfg.predictor]}

    def close(self) -> None:
        """Remove this shard's spilled feature files (derived from personal events), unless shared."""
        if self.own_cache:
            self.cache.clear_files()
