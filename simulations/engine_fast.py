"""The fast engine: every virtual device in one process, on ONE shared frozen base.

The Flower apps' client and server logic: each device's round is `federation.device.train_round`
(its own vault ledger as its ReleaseGate), the server screens and averages with
`federation.server.aggregate`, devices score the global and personalised adapters with
`federation.device.evaluate_device`. Fast because the base is loaded and LoRA-wrapped once; LoRA
sits on the top layer only, so the frozen layers' outputs for each device's examples are computed
once (batched across a cohort) and reused from a cache that spills to disk (`devices.FeatureCache`).

`--mode federated` first learns the habit scorer's shared weights (simulations.habit_sim) with
DP-FedAvg for a share of the user-level budget, the LoRA noise calibrated with that release as a
prior; `--predictor habit` trains no LoRA at all (`_habit_round`), `--predictor lora` runs no scorer.
`--mode local` trains each device's own adapter with DP-SGD at record level, a round being
`local_epochs` more passes, each round's steps one ledger release (the target reached at the last).
"""

from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from simulations.devices import FeatureCache, SimDevice, attach_feature_cache, encode_all, quantized_rate
from simulations.config import RoundResult, SimulationConfig, epsilon_stats
from privacy.randomness import SEEDED

MAX_LENGTH = 64  # personal.training.TrainConfig's default, which train_round and evaluate_device use


def federation_config(cfg: SimulationConfig, n_devices: int, labels_count: int = 0, prior: tuple = ()):
    """The FederationConfig a simulation runs with: noise calibrated to the user-level target.

    `prior`: user-level releases charged before the LoRA rounds (the habit scorer's): the LoRA
    noise is calibrated so that they and the LoRA rounds together cost at most the target.

    In "secagg" mode each of the K devices of a cohort adds sigma*C/sqrt(K), so the sum the server
    uses carries sigma*C (the secure-aggregation protocol itself is not simulated: both engines'
    servers only ever use the sum, which is what SecAgg+ would reveal).
    """
    from federation.config import FederationConfig

    k = min(n_devices, cfg.devices_per_round or n_devices)
    q = k / n_devices
    z = 0.0 if cfg.non_private else calibrated_noise(cfg.epsilon, q, cfg.rounds, cfg.delta, tuple(prior))
    return FederationConfig(
        rounds=cfg.rounds, mode=cfg.federation_mode, secagg_min_devices=max(1, k), clip_norm=cfg.update_clip,
        noise_multiplier=z, delta=cfg.delta,
        fraction_train=q, fraction_evaluate=q, min_train_devices=min(2, k), min_evaluate_devices=min(2, k),
        min_available_devices=min(2, n_devices), base=cfg.model, local_epochs=cfg.local_epochs,
        local_lr=cfg.learning_rate, batch_size=cfg.batch_size, lora_r=cfg.lora_rank,
        personal_epochs=cfg.personal_epochs, history=cfg.history, seed=cfg.seed,
        round_timeout_s=24 * 3600.0,  # a simulated device is never late: a busy machine must not drop it
    )


@lru_cache(maxsize=1024)
def calibrated_noise(epsilon: float, sample_rate: float, steps: int, delta: float, prior: tuple = ()) -> float:
    """Noise multiplier so that `steps` releases at sample rate q, after the `prior` ones, cost
    `epsilon` with the gates' accountant: user level for federated rounds (q = cohort rate), record
    level for local DP-SGD steps."""
    from privacy.accountant import noise_for_epsilon
    from simulations.devices import GATE_ACCOUNTANT

    return float(noise_for_epsilon(epsilon * 0.999, sample_rate, steps, delta, accountant=GATE_ACCOUNTANT, prior=prior))


@dataclass
class DeviceState:
    """What the engine remembers about a device between rounds (its ledger lives in its vault)."""

    epsilon: float = 0.0
    rounds: int = 0
    declined: str | None = None
    last_eval: dict = field(default_factory=dict)
    adapter: object = None  # local mode: the device's own adapter between rounds


class FastEngine:
    """Runs rounds of the simulation in-process. `round(r)` returns that round's metrics."""

    def __init__(self, cfg: SimulationConfig, devices: Sequence[SimDevice], labels: Sequence[str],
                 cache_dir: Path, tick: Callable[[int], None] | None = None,
                 cache: FeatureCache | None = None) -> None:
        from federation.device import initial_adapter, lora_settings, shared_base
        from personal.training import wrap

        from simulations.habit_sim import scorer_plan

        self.cfg, self.devices, self.labels = cfg, list(devices), list(labels)
        self.tick = tick or (lambda n: None)
        self.run_id = f"simulation-{uuid.uuid4().hex[:12]}"  # ledgers charge rounds per run
        # Federated: the habit scorer's DP-FedAvg run takes its share of the user-level budget first.
        self.scorer_plan = scorer_plan(cfg, len(self.devices), self.run_id) if self.runs_scorer else None
        self.scorer_weights: dict | None = None
        prior = self.scorer_plan.prior if self.scorer_plan and cfg.trains_lora else ()
        self.fcfg = federation_config(cfg, len(self.devices), len(self.labels), prior)
        self.base = shared_base(cfg.model, self.fcfg.lora_r)
        self.pm = wrap(self.base, lora_settings(self.fcfg))
        # A caller running several configurations on the same devices may share one cache.
        self.own_cache = cache is None
        self.cache = cache if cache is not None else FeatureCache(cache_dir)
        attach_feature_cache(self.pm, self.cache)
        self.state = {d.user: DeviceState() for d in self.devices}
        self.index = {d.user: i for i, d in enumerate(self.devices)}
        self.global_adapter = initial_adapter(self.base, self.labels, self.fcfg) if cfg.mode == "federated" else None
        self.canaries = _canary_clients(cfg, self.global_adapter)  # None unless --audit-canaries (issue 17)
        self.rng = random.Random(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)
        self.participations: dict[str, int] = {}
        self.train_seconds = 0.0
        self.encode_seconds = 0.0
        self.train_examples_seen = 0

    @property
    def runs_scorer(self) -> bool:
        """Federated runs learn the habit scorer's shared weights (unless --no-habit-scorer or --predictor lora)."""
        return self.cfg.mode == "federated" and self.cfg.habit_scorer and self.cfg.predictor != "lora"

    # -- setup ----------------------------------------------------------------------------
    def train_scorer(self, on_round: Callable[[int], None] | None = None) -> dict:
        """Federated: the habit scorer's DP-FedAvg run over every device, before the LoRA rounds.

        Returns what results.json reports about it (its plan, the epsilon its releases cost).
        """
        from simulations.habit_sim import store_weights, train_scorer

        if not self.runs_scorer:
            return {}
        ts = time.perf_counter()
        hook = (lambda r, _w: on_round(r)) if on_round else None
        self.scorer_weights, spent = train_scorer(self.cfg, self.scorer_plan, self.devices, self.labels, hook)
        store_weights(self.devices, self.scorer_weights, self.labels, spent, self.scorer_plan.run.run)
        for user, eps in spent.items():
            self.state[user].epsilon = eps
        values = list(spent.values())
        return self.scorer_plan.to_json() | {"epsilon_max": max(values, default=0.0), "wall_s": time.perf_counter() - ts,
                                              "weights_w": [float(x) for x in self.scorer_weights["w"]]}

    def encode(self, devices: Sequence[SimDevice]) -> None:
        """Encode these devices' train and test texts through the frozen layers, batched across devices.

        Lists already in the cache are skipped, so each device's features are computed once per run.
        """
        ts = time.perf_counter()
        lists = []
        for d in devices:
            lists.append([e.text for e in d.train if e.label is not None])
            lists.append([e.text for e in d.test if e.label is not None])
        encode_all(self.pm, lists, MAX_LENGTH)
        self.encode_seconds += time.perf_counter() - ts

    def cohort(self) -> list[SimDevice]:
        """The devices sampled this round (all when --devices-per-round is not set)."""
        k = min(len(self.devices), self.cfg.devices_per_round or len(self.devices))
        if k == len(self.devices):
            return list(self.devices)
        return self.rng.sample(self.devices, k)

    def round(self, r: int) -> RoundResult:
        """One round in the configured mode."""
        t0 = time.perf_counter()
        if not self.cfg.trains_lora:
            metrics = self._habit_round(r)
        elif self.cfg.mode == "federated":
            metrics = self._federated_round(r)
        else:
            metrics = self._local_round(r)
        metrics.wall_s = time.perf_counter() - t0
        return metrics

    # -- federated ------------------------------------------------------------------------
    def _federated_round(self, r: int) -> RoundResult:
        from federation.device import DeviceDeclined, DeviceRound, adapter_from_arrays, noise_rng, train_round
        from federation.server import aggregate
        from federation.update import spec_of

        cohort = self.cohort()
        self.encode(cohort)
        q = len(cohort) / len(self.devices)
        updates, nbytes = [], []
        for d in cohort:
            st = self.state[d.user]
            with d.open_gate() as (_vault, gate):
                ctx = DeviceRound(d.user, r, q, None if self.cfg.non_private else gate, d.user,
                                  noise_rng(self.cfg.seed, r, self.index[d.user]), seed=self.cfg.seed + r,
                                  run=self.run_id)
                ts = time.perf_counter()
                try:
                    res = train_round(self.base, self.global_adapter, d.train, self.fcfg, ctx)
                except DeviceDeclined as exc:
                    st.declined = exc.reason
                    self.tick(1)
                    continue
                self.train_seconds += time.perf_counter() - ts
                self.train_examples_seen += len(d.train) * self.fcfg.local_epochs
                if self.cfg.non_private:
                    gate.commit_non_private(d.user, "user", res.wire.sha256(),
                                            details={"round": r, "mode": "simulation", "non_private": True})
                    st.epsilon = math.inf
                else:
                    st.epsilon = float(res.epsilon if res.epsilon is not None else gate.spent(d.user, "user"))
            st.rounds += 1
            updates.append(res.update)
            nbytes.append(res.bytes_up)
            self.tick(1)
        spec = spec_of(self.global_adapter.tensors)
        if self.canaries is not None:  # an audit run: canary clients join the round like devices
            updates += self.canaries.updates(r, q)
        outcome = aggregate(self.global_adapter.tensors, updates, spec, self.fcfg, r, self.np_rng)
        if self.canaries is not None:
            self.canaries.observe(self.global_adapter.tensors, outcome.arrays)
        self.global_adapter = adapter_from_arrays(self.base, outcome.arrays, self.labels, self.fcfg)
        if r == self.cfg.rounds and not self.cfg.non_private and len(cohort) < len(self.devices):
            self._settle(r, q)
        evaluated = cohort
        if self.cfg.evaluate_all and r == self.cfg.rounds:
            evaluated = self.devices
            self.encode(evaluated)
        evals = self._evaluate_federated(evaluated, r)
        extra = {"sampled": len(cohort), "accepted": len(outcome.accepted), "rejected": len(outcome.rejected),
                 "declined": sum(1 for d in cohort if self.state[d.user].declined), "devices_evaluated": len(evals),
                 "global_top5": _mean([e["global-top5"] for e in evals])}
        return self._round_result(r, evals, nbytes, extra)

    def _settle(self, rounds: int, q: float) -> None:
        """After the last round every device's ledger charges the rounds it sat out since its last
        participation, so each shows the run's full user-level epsilon (see federation.device).
        A device that declined (budget spent) left the run: its data was in no later round."""
        from federation.device import settle_run

        digest = self.global_adapter.sha256()
        for d in self.devices:
            if self.state[d.user].declined:
                continue
            with d.open_gate() as (_vault, gate):
                self.state[d.user].epsilon = settle_run(gate, d.user, self.run_id, rounds, self.fcfg, q, digest, rng=SEEDED)

    def _evaluate_federated(self, cohort: Sequence[SimDevice], r: int) -> list[dict]:
        """Each evaluated device scores the new global adapter and its personalised fine-tune of it."""
        from federation.device import evaluate_device

        out = []
        for d in cohort:
            ts = time.perf_counter()
            probs: dict = {}
            m = evaluate_device(self.base, self.global_adapter, d.train, d.test, self.fcfg, seed=self.cfg.seed + r,
                                probs_out=probs)
            self.train_seconds += time.perf_counter() - ts
            self.train_examples_seen += len(d.train) * self.fcfg.personal_epochs
            m |= self._with_habits(d, self.global_adapter.labels, probs.get("personal"), m)
            self.state[d.user].last_eval = m
            out.append(m)
        return out

    def _habit_weights(self):
        """The scorer's shared weights (federated) or None: each device's own counts (local, or no scorer)."""
        return self.scorer_weights if self.runs_scorer else None

    def _hits(self, d: SimDevice, labels: Sequence[str], probs) -> dict | None:
        """Per predictor (habit, lora, combined): top-1/top-5 hits on the device's held-out events."""
        from simulations.habit_sim import habit_log_probs, predictor_hits

        test = [e for e in d.test if e.label is not None]
        if (probs is None and self.cfg.trains_lora) or not test or len(d.habit_queries) != len(test):
            return None
        if self.runs_scorer and self.scorer_weights is None:
            return None  # the scorer has not run (an engine driven without train_scorer)
        habit = habit_log_probs(d, labels, self._habit_weights())
        return predictor_hits(habit, probs, labels, [e.label for e in test], self.cfg.combine_weight)

    def _with_habits(self, d: SimDevice, labels: Sequence[str], probs, m: dict) -> dict:
        """The LoRA model's numbers kept as lora_top1/5; top1/top5 become the configured predictor's."""
        from simulations.habit_sim import metrics

        hits = self._hits(d, labels, probs)
        if hits is None:
            return {"lora_top1": m.get("top1"), "lora_top5": m.get("top5")}
        return metrics(hits, self.cfg.predictor)

    def _habit_round(self, r: int) -> RoundResult:
        """--predictor habit: nothing more is trained; every device scores its held-out events with counts (+ scorer)."""
        for d in self.devices:
            self.state[d.user].last_eval = self._with_habits(d, self._habit_labels(d), None, {})
        evals = [st.last_eval for st in self.state.values() if "top1" in st.last_eval]
        return self._round_result(r, evals, [], {"devices_evaluated": len(evals)})

    def _habit_labels(self, d: SimDevice) -> list[str]:
        """The labels a device's habit predictor ranks: the shared vocabulary (federated) or its own."""
        return self.labels if self.cfg.mode == "federated" else sorted({e.label for e in d.train if e.label})

    # -- local only -----------------------------------------------------------------------
    def _local_round(self, r: int) -> RoundResult:
        from federation.device import topk_accuracy

        evals = []
        self.encode(self.devices)
        for d in self.devices:
            st = self.state[d.user]
            labels = sorted({e.label for e in d.train if e.label is not None})
            test = [e for e in d.test if e.label is not None]
            if not labels or not test:
                self.tick(1)
                continue
            ts = time.perf_counter()
            adapter = self._local_train(d, st, labels, r)
            self.train_seconds += time.perf_counter() - ts
            self.pm.load_adapter(adapter)
            probs = self.pm.predict_proba([e.text for e in test], max_length=MAX_LENGTH)
            targets = [e.label for e in test]
            m = {"top1": topk_accuracy(probs, labels, targets, 1), "top5": topk_accuracy(probs, labels, targets, 5),
                 "num-test": float(len(test))}
            m |= self._with_habits(d, labels, probs, m)
            st.last_eval = m
            evals.append(m)
            self.tick(1)
        return self._round_result(r, evals, [0] * len(self.devices), {"devices_evaluated": len(evals)})

    def _local_train(self, d: SimDevice, st: DeviceState, labels: list[str], r: int):
        """`local_epochs` more DP-SGD passes over the device's own events: one record-level release."""
        from personal.training import DPConfig, MechanismPlan, TrainConfig, train_adapter

        train = [e for e in d.train if e.label is not None]
        tcfg = TrainConfig(lora=self.pm.lora, epochs=self.cfg.local_epochs, batch_size=self.cfg.batch_size,
                           lr=self.cfg.learning_rate, max_length=MAX_LENGTH, seed=self.cfg.seed + r)
        with d.open_gate() as (vault, gate):
            if self.cfg.non_private:
                res = train_adapter(self.base, train, labels, tcfg, DPConfig.non_private(), init=st.adapter)
                gate.commit_non_private(d.user, "record", res.adapter.sha256(), details={"round": r, "mode": "simulation"})
                st.epsilon = math.inf
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
                                    max_grad_norm=self.cfg.clip_norm, rng=SEEDED), init=st.adapter, start_step=start,
                                    plan=plan)
                gate.commit(d.user, "record", step_plan.mechanism(), artefact_sha256=res.adapter.sha256(),
                            mechanism="dp-sgd", details={"round": r, "mode": "simulation", "steps": per_round,
                                                         "rng": SEEDED})
                st.epsilon = gate.spent(d.user, "record")
            vault.put_artefact(d.user, "adapter", "simulation-local", res.adapter.to_bytes(),
                               {"round": r, "epsilon": None if math.isinf(st.epsilon) else st.epsilon})
        self.train_examples_seen += len(train) * self.cfg.local_epochs
        st.adapter, st.rounds = res.adapter, st.rounds + 1
        return res.adapter

    # -- shared ---------------------------------------------------------------------------
    def _round_result(self, r: int, evals: list[dict], nbytes: list[int], extra: dict) -> RoundResult:
        eps = [s.epsilon for s in self.state.values() if s.rounds > 0 or s.epsilon > 0]
        e_max, e_med = epsilon_stats(eps)
        for name in ("habit", "lora", "combined"):
            for k in (1, 5):
                values = [e[f"{name}_top{k}"] for e in evals if e.get(f"{name}_top{k}") is not None]
                if values:
                    extra[f"{name}_top{k}"] = _mean(values)
        return RoundResult(
            round=r, top1=_mean([e["top1"] for e in evals]), top5=_mean([e["top5"] for e in evals]),
            global_top1=_mean([e["global-top1"] for e in evals]) if self.cfg.mode == "federated" and self.cfg.trains_lora else None,
            epsilon_max=e_max, epsilon_median=e_med,
            bytes_up_per_device=float(statistics.mean(nbytes)) if nbytes else 0.0, wall_s=0.0, extra=extra,
        )

    def personal_hits(self, d: SimDevice) -> dict[str, list[bool]]:
        """Per held-out example: is each predictor's top-1 right? (planted-routine check)

        "personalized" is the configured predictor's (results.json's top1), with "lora", "habit" and
        "combined" when they ran. Federated LoRA: the personalization `evaluate_device` does; local: own adapter.
        """
        from federation.device import train_config
        from personal.training import DPConfig, train_adapter

        test = [e for e in d.test if e.label is not None]
        if not self.cfg.trains_lora:
            hits = self._hits(d, self._habit_labels(d), None)
            return {"personalized": hits["habit"][1], "habit": hits["habit"][1]} if hits else {"personalized": [False] * len(test)}
        if self.cfg.mode == "federated":
            usable = [e for e in d.train if e.label in set(self.labels)]
            adapter = self.global_adapter
            if self.fcfg.personal_epochs > 0 and usable:
                adapter = train_adapter(self.base, usable, self.labels, train_config(self.fcfg, self.fcfg.personal_epochs,
                                        self.cfg.seed + self.cfg.rounds), DPConfig.non_private(), init=adapter).adapter
        else:
            adapter = self.state[d.user].adapter
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

    def canary_estimate(self) -> dict | None:
        """The canary clients' user-level epsilon estimates next to the claim (None without canaries)."""
        if self.canaries is None:
            return None
        return self.canaries.estimate(self.canaries.initial, self.global_adapter.tensors, self.cfg.delta,
                                      claimed_epsilon=self.cfg.epsilon).to_dict()

    def device_rows(self) -> list[dict]:
        """Per device: events, group, epsilon spent, rounds taken part in, last evaluation."""
        rows = []
        for d in self.devices:
            st = self.state[d.user]
            rows.append({"user": d.user, "events": d.n_events, "group": d.group, "epsilon": st.epsilon,
                         "rounds": st.rounds, "declined": st.declined,
                         "top1": st.last_eval.get("top1"), "top5": st.last_eval.get("top5"),
                         "global_top1": st.last_eval.get("global-top1"),
                         **{f"{name}_top{k}": st.last_eval.get(f"{name}_top{k}")
                            for name in ("habit", "lora", "combined") for k in (1, 5)}})
        return rows

    def close(self) -> None:
        """Remove the spilled feature files (they are derived from personal events), unless shared."""
        if self.own_cache:
            self.cache.clear_files()


def _canary_clients(cfg: SimulationConfig, global_adapter):
    """Canary clients over the global adapter's tensors when the run audits with them, else None."""
    if not cfg.audit_canaries or global_adapter is None:
        return None
    from federation.canary import CanaryClients
    from federation.update import spec_of

    clients = CanaryClients(spec_of(global_adapter.tensors), cfg.audit_canaries, cfg.update_clip, seed=cfg.seed)
    clients.start({k: np.array(v, np.float32) for k, v in global_adapter.tensors.items()})
    return clients


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.mean(values)) if values else 0.0

