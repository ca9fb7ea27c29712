"""The fast engine: the server side here, the virtual devices on shards that each hold ONE shared frozen base.

It implements the Engine protocol (simulations.engines) and runs the same client and server logic as the Flower apps: each device's round is
`federation.device.train_round` (with the device's own vault ledger as its ReleaseGate), the
server screens and averages with `federation.server.aggregate`, and devices score the global
and their personalised adapters with `federation.device.evaluate_device`. What makes it fast:

- the base is loaded and LoRA-wrapped once per worker; devices only swap adapter arrays;
- LoRA sits on the top layer only, so the frozen lower layers' outputs for each device's
  examples are computed once (batched across devices, the first time a device is sampled) and
  reused in every later round, from a memory-bounded cache that spills to disk
  (`simulations.devices.FeatureCache`);
- the devices are sharded over `--workers` processes (or Ray actors with `--ray-address`), each
  device on one shard for the whole run (simulations.shards, simulations.workers); what comes back
  is merged in cohort order, so results do not depend on the number of workers;
- no per-round actors or messages per device: one request per shard and round.

`--mode federated` first learns the habit scorer's shared weights (simulations.habit_sim) with
DP-FedAvg through each device's gate for a share of the user-level budget; the LoRA noise is then
calibrated with that release as a prior. `top1` is the configured predictor's (habit, LoRA, combined).

`--mode local` trains each device's own adapter with DP-SGD at record level (`train_adapter`), a
round being `local_epochs` more passes; the noise is calibrated once for the run and each round's
steps are one ledger release, so the ledger's epsilon reaches the target exactly at the last round.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from privacy.randomness import SEEDED
from simulations.config import RoundResult, SimulationConfig, epsilon_stats
from simulations.devices import FeatureCache, SimDevice
from simulations.shards import DeviceOutcome, ShardSetup, calibrated_noise

__all__ = ["DeviceState", "FastEngine", "calibrated_noise", "federation_config"]
ENCODE_CHUNK = 64  # texts per encoding group (the frozen layers run 64 rows a batch): small groups balance the shards


def federation_config(cfg: SimulationConfig, n_devices: int, labels_count: int = 0, prior: tuple = ()):
    """The FederationConfig a simulation runs with: noise calibrated to the user-level target.

    `prior`: user-level releases every device is charged before the LoRA rounds (the habit
    scorer's, simulations.habit_sim): the LoRA noise is calibrated so that they and the LoRA
    rounds together cost at most the target.

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


@dataclass
class DeviceState:
    """What the engine remembers about a device between rounds (its ledger lives in its vault)."""

    epsilon: float = 0.0
    rounds: int = 0
    declined: str | None = None
    last_eval: dict = field(default_factory=dict)


class FastEngine:
    """The simulation's server side in this process; the devices' side on shards (simulations.workers)."""

    def __init__(self, cfg: SimulationConfig, devices: Sequence[SimDevice], labels: Sequence[str],
                 cache_dir: Path, tick: Callable[[int], None] | None = None,
                 cache: FeatureCache | None = None) -> None:
        from simulations.habit_sim import scorer_plan
        from simulations.workers import ShardPool

        self.cfg, self.devices, self.labels = cfg, list(devices), list(labels)
        self.tick = tick or (lambda n: None)
        self.run_id = f"simulation-{uuid.uuid4().hex[:12]}"  # ledgers charge rounds per run
        # Federated: the habit scorer's DP-FedAvg run takes its share of the user-level budget first.
        self.scorer_plan = scorer_plan(cfg, len(self.devices), self.run_id) if self.runs_scorer else None
        self.scorer_weights: dict | None = None
        prior = self.scorer_plan.prior if self.scorer_plan and cfg.trains_lora else ()
        self.fcfg = federation_config(cfg, len(self.devices), len(self.labels), prior)
        # Workers start loading their base now, while this process sets up (and learns the habit scorer).
        # A caller running several configurations on the same devices may share one cache (one worker).
        self.pool = ShardPool(ShardSetup(cfg, self.fcfg, self.labels, str(cache_dir), self.run_id), cfg.workers,
                              cfg.ray_address, cache, most=len(self.devices))
        self.state = {d.user: DeviceState() for d in self.devices}
        self.index = {d.user: i for i, d in enumerate(self.devices)}
        self.global_adapter = None  # federated: the first shard's initial adapter, fetched at round 1
        self.canaries = None  # CanaryClients when --audit-canaries (issue 17)
        self.rng = random.Random(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)
        self.encoded: set[str] = set()
        self.train_seconds = 0.0
        self.encode_seconds = 0.0
        self.train_examples_seen = 0

    @property
    def runs_scorer(self) -> bool:
        """Federated runs learn the habit scorer's shared weights (unless --no-habit-scorer or --predictor lora)."""
        return self.cfg.mode == "federated" and self.cfg.habit_scorer and self.cfg.predictor != "lora"

    @property
    def devices_per_round(self) -> int:
        """How many devices each round trains (the progress bar's length)."""
        return min(len(self.devices), self.cfg.devices_per_round or len(self.devices))

    # -- setup ----------------------------------------------------------------------------
    def prepare(self, results: dict, progress: Callable[[str, int], Callable[[int], None]]) -> None:
        """Before the rounds: the noise, the habit scorer's run (federated) and the budget split in `results`."""
        from simulations.fast_report import budget_split, habit_scorer_summary, predictor_summary

        lora_fed = self.cfg.mode == "federated" and self.cfg.trains_lora
        results["privacy"]["noise_multiplier"] = self.fcfg.noise_multiplier if lora_fed else None
        results["habit_scorer"] = habit_scorer_summary(self, progress)
        results["predictor"] = predictor_summary(self)
        if self.cfg.mode == "federated":
            results["privacy"]["budget_split"] = budget_split(self)

    def train_scorer(self, on_round: Callable[[int], None] | None = None) -> dict:
        """Federated: the habit scorer's DP-FedAvg run over every device, before the LoRA rounds.

        Returns what results.json reports about it (its plan, the epsilon its releases cost).
        """
        from simulations.habit_sim import store_weights, train_scorer

        if not self.runs_scorer:
            return {}
        ts = time.perf_counter()
        hook = (lambda r, _w: on_round(r)) if on_round else None
        outcome = train_scorer(self.cfg, self.scorer_plan, self.devices, self.labels, hook)
        store_weights(self.devices, outcome, self.labels, self.scorer_plan.run.run)
        self.scorer_weights = outcome.usable
        self.pool.broadcast("set_scorer", outcome.usable)
        for user, eps in outcome.spent.items():
            self.state[user].epsilon = eps
        values = list(outcome.spent.values())
        return self.scorer_plan.to_json() | {"epsilon_max": max(values, default=0.0), "wall_s": time.perf_counter() - ts,
                                              "check": outcome.check.to_json(),
                                              "weights_w": [float(x) for x in outcome.weights["w"]]}

    def encode(self, devices: Sequence[SimDevice]) -> None:
        """Place the devices not yet on a shard, in groups of about ENCODE_CHUNK texts, and have their
        shards encode them through the frozen layers (once per run). The groups depend only on the
        devices' order, never on the number of workers, so neither do the features."""
        ts = time.perf_counter()
        groups, group, size = [], [], 0
        for d in devices:
            if d.user in self.encoded:
                continue
            self.encoded.add(d.user)
            group.append(d)
            size += sum(1 for e in d.train if e.label is not None) + sum(1 for e in d.test if e.label is not None)
            if size >= ENCODE_CHUNK:
                groups.append(group)
                group, size = [], 0
        if group:
            groups.append(group)
        self.pool.encode(self.pool.place(groups))
        self.encode_seconds += time.perf_counter() - ts

    def cohort(self) -> list[SimDevice]:
        """The devices sampled this round (all when --devices-per-round is not set)."""
        k = self.devices_per_round
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

    def _count(self, outcome: DeviceOutcome) -> None:
        """Add a device's training time and examples to the engine's totals."""
        self.train_seconds += outcome.train_s
        self.train_examples_seen += outcome.examples

    # -- federated ------------------------------------------------------------------------
    def _federated_round(self, r: int) -> RoundResult:
        from federation.server import aggregate
        from federation.update import spec_of

        if self.global_adapter is None:  # this process never loads the base: a shard makes the initial adapter
            self.global_adapter = self.pool.first("initial_adapter")
            self.canaries = _canary_clients(self.cfg, self.global_adapter)
        cohort = self.cohort()
        self.encode(cohort)
        q = len(cohort) / len(self.devices)
        outcomes = self.pool.run("train", [d.user for d in cohort], r, q, self.global_adapter,
                                 streams=[self.index[d.user] for d in cohort], tick=self.tick)
        updates, nbytes = [], []
        for o in outcomes:  # in cohort order, as one process would have produced them
            st = self.state[o.user]
            if o.declined:
                st.declined = o.declined
                continue
            self._count(o)
            st.epsilon, st.rounds = o.epsilon, st.rounds + 1
            updates.append(o.update)
            nbytes.append(o.bytes_up)
        spec = spec_of(self.global_adapter.tensors)
        if self.canaries is not None:  # an audit run: canary clients join the round like devices
            updates += self.canaries.updates(r, q)
        outcome = aggregate(self.global_adapter.tensors, updates, spec, self.fcfg, r, self.np_rng)
        if self.canaries is not None:
            self.canaries.observe(self.global_adapter.tensors, outcome.arrays)
        self.global_adapter = _next_global(self.global_adapter, outcome.arrays)
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

    def _evaluate_federated(self, devices: Sequence[SimDevice], r: int) -> list[dict]:
        """Each evaluated device scores the new global adapter and its personalised fine-tune of it."""
        outcomes = self.pool.run("evaluate", [d.user for d in devices], r, self.global_adapter)
        for o in outcomes:
            self._count(o)
            self.state[o.user].last_eval = o.metrics
        return [o.metrics for o in outcomes]

    def _habit_round(self, r: int) -> RoundResult:
        """--predictor habit: nothing more is trained; every device scores its held-out events with counts (+ scorer)."""
        self.pool.place([[d] for d in self.devices])
        for o in self.pool.run("habits", [d.user for d in self.devices], tick=self.tick):
            self.state[o.user].last_eval = o.metrics
        evals = [st.last_eval for st in self.state.values() if "top1" in st.last_eval]
        return self._round_result(r, evals, [], {"devices_evaluated": len(evals)})

    # -- local only -----------------------------------------------------------------------
    def _local_round(self, r: int) -> RoundResult:
        """Each device trains its own adapter further (DP-SGD, record level) and scores it."""
        self.encode(self.devices)
        evals = []
        for o in self.pool.run("local", [d.user for d in self.devices], r, tick=self.tick):
            if not o.trained:
                continue  # no labelled training or held-out events
            self._count(o)
            st = self.state[o.user]
            st.epsilon, st.rounds, st.last_eval = o.epsilon, st.rounds + 1, o.metrics
            evals.append(o.metrics)
        return self._round_result(r, evals, [0] * len(self.devices), {"devices_evaluated": len(evals)})

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
        """Per held-out example: is each predictor's top-1 right? (planted-routine check, on the
        device's shard: see `simulations.shards.DeviceShard.personal_hits`)."""
        self.pool.place([[d]])
        return self.pool.call(d.user, "personal_hits", self.global_adapter)

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

    def finish(self, results: dict) -> None:
        """After the rounds: throughput and timing, and the canary audit when the run has one."""
        from simulations.fast_report import throughput

        results.setdefault("timing", {}).update(throughput(results, self))
        if self.cfg.audit_canaries:
            results["canary_audit"] = self.canary_estimate()

    def ledger_summaries(self) -> tuple[str, list]:
        """(accountant, each device's privacy.report.DeviceSummary from the ledger in its vault)."""
        from simulations.fast_report import vault_summaries

        return vault_summaries(self.devices, self.cfg)

    def close(self) -> None:
        """Stop the workers; each removes its spilled feature files (derived from personal events), unless shared."""
        self.pool.close()


def _next_global(previous, arrays):
    """The new global Adapter: the aggregated arrays on the previous one's base identity and labels
    (what `federation.device.adapter_from_arrays` builds from a loaded base)."""
    from personal.adapter import Adapter

    return Adapter(previous.base_identity, list(previous.labels), {k: np.asarray(v, np.float32) for k, v in arrays.items()},
                   previous.lora)


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

