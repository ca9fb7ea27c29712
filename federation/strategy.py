"""The server's round loop: `HomebodyStrategy`, a Flower `Strategy`, and the `QuorumGrid` it can run on."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from flwr.serverapp.strategy import Strategy

from federation.config import FederationConfig
from federation.history import FederationHistory, RoundRecord
from federation.logs import flower_log as _log
from federation.server import PopulationSummary, Rejection, aggregate, user_epsilon
from federation.update import Arrays, UpdateRejected, spec_of
from federation.wire import arrays_to_record, content_to_update
from privacy.randomness import noise_source

if TYPE_CHECKING:
    from flwr.app import Message


class HomebodyStrategy(Strategy):
    """FedAvg over clipped, noised adapter deltas, run by Flower's `Strategy.start` round loop.

    - train: sample a cohort (excluding devices that dropped), send the global shared adapter;
      on replies, log drop-outs (errors and missing replies) by device name, log declines,
      screen every update with `check_update` and average the accepted ones (federation.server).
    - evaluate: collect per-device metrics (global and personalised top-1/top-5).
    """

    def __init__(self, config: FederationConfig, labels: Sequence[str], base_sha256: str, initial: Arrays, seed: int | None = None) -> None:
        self.config, self.labels, self.base_sha256 = config, list(labels), base_sha256
        self.spec = spec_of(initial)
        self.global_arrays = {k: np.asarray(v, np.float32) for k, v in initial.items()}
        self.initial_arrays = dict(self.global_arrays)
        self.rounds: dict[int, RoundRecord] = {}
        self.node_names: dict[int, str] = {}
        self.gone: set[int] = set()
        self.participations: dict[str, int] = {}
        self.declined: dict[str, str] = {}
        self.sample_rates: list[float] = []
        self.rng = random.Random(seed)
        self.np_rng = noise_source(seed)  # central mode's noise: the OS CSPRNG unless a simulation seeds it
        self._sent: dict[tuple[str, int], list["Message"]] = {}
        self._t0 = time.perf_counter()

    # -- helpers --------------------------------------------------------------------------
    def _record(self, rnd: int) -> RoundRecord:
        return self.rounds.setdefault(rnd, RoundRecord(rnd))

    def name(self, node_id: int) -> str:
        return self.node_names.get(node_id, f"node-{node_id}")

    def _cohort(self, grid, fraction: float, minimum: int) -> tuple[list[int], int]:
        deadline = time.time() + self.config.round_timeout_s
        while True:
            alive = [n for n in grid.get_node_ids() if n not in self.gone]
            if len(alive) >= self.config.min_available_devices or time.time() > deadline:
                break
            time.sleep(1.0)
        size = min(len(alive), max(math.ceil(fraction * len(alive)), minimum))
        return sorted(self.rng.sample(alive, size)), len(alive)

    def _messages(self, kind: str, rnd: int, fraction: float, minimum: int, grid) -> list["Message"]:
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        if fraction == 0.0:
            return []
        nodes, available = self._cohort(grid, fraction, minimum)
        mtype = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
        rate = len(nodes) / available if available else 0.0
        config = ConfigRecord(self.config.to_record() | {"server-round": rnd, "sample-rate": rate, "labels": self.labels,
                                                          "base-sha256": self.base_sha256})
        content = RecordDict({"arrays": arrays_to_record(self.global_arrays), "config": config})
        messages = [Message(content=content, dst_node_id=n, message_type=mtype) for n in nodes]
        self._sent[(kind, rnd)] = messages  # the grid fills in their message ids when it pushes them
        if kind == "train":
            self._record(rnd).sampled = len(nodes)
            self.sample_rates.append(rate)
            _log(logging.INFO, "round %d: sampled %d of %d devices (q=%.3f)", rnd, len(nodes), available, rate)
        return messages

    def _sort_replies(self, kind: str, rnd: int, replies: Iterable["Message"]) -> list[tuple[int, "Message"]]:
        """Log drop-outs by device name; return (node id, reply) for the replies that carry content.

        Error replies made by the SuperLink (node unavailable) come from the SuperLink's own id,
        so the node is found through the message the reply answers.
        """
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent.get((kind, rnd), [])}
        record, ok, answered = self._record(rnd), [], set()
        for msg in replies:
            node = sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            answered.add(node)
            if msg.has_error():
                self._drop(record, node, kind, f"error reply: {msg.error.reason}")
                continue
            if "header" in msg.content and "device_id" in msg.content["header"]:
                self.node_names[node] = str(msg.content["header"]["device_id"])
            ok.append((node, msg))
        for node in sent.values():
            if node not in answered:
                self._drop(record, node, kind, "no reply before the round closed")
        return ok

    def _drop(self, record: RoundRecord, node: int, kind: str, why: str) -> None:
        self.gone.add(node)
        record.dropped[self.name(node)] = why
        _log(logging.WARNING, "round %d: device %s dropped out during %s (%s)", record.round, self.name(node), kind, why)

    # -- the Strategy interface (flwr.serverapp.strategy.Strategy's abstract methods) ----------
    def configure_train(self, server_round, arrays, config, grid):
        return self._messages("train", server_round, self.config.fraction_train, self.config.min_train_devices, grid)

    def aggregate_train(self, server_round, replies):
        from flwr.app import MetricRecord

        record, updates = self._record(server_round), []
        for node, msg in self._sort_replies("train", server_round, replies):
            name = self.name(node)
            header = msg.content["header"] if "header" in msg.content else {}
            if "declined" in header:
                record.declined[name] = self.declined[name] = str(header["declined"])
                _log(logging.WARNING, "round %d: device %s declined: %s", server_round, name, header["declined"])
                continue
            try:
                update = content_to_update(msg.content)
            except UpdateRejected as exc:
                record.rejected.append(Rejection(name, server_round, exc.reason, exc.detail))
                _log(logging.WARNING, "round %d: rejected update from device %s: %s (%s)", server_round, name, exc.reason, exc.detail)
                continue
            if update.header.device_id != name:
                update.header = type(update.header)(**{**update.header.to_dict(), "device_id": name})
            metrics = msg.content["metrics"] if "metrics" in msg.content else {}
            record.bytes_up[name] = int(metrics.get("bytes-up", 0))
            updates.append(update)
        outcome = aggregate(self.global_arrays, updates, self.spec, self.config, server_round, self.np_rng)
        for rej in outcome.rejected:
            _log(logging.WARNING, "round %d: rejected update from device %s: %s (%s)", server_round, rej.device_id, rej.reason, rej.detail)
        record.rejected.extend(outcome.rejected)
        record.accepted = outcome.accepted
        for name in outcome.accepted:
            self.participations[name] = self.participations.get(name, 0) + 1
        for name, count in self.participations.items():
            record.epsilon[name] = self._epsilon(count)
        self.global_arrays = outcome.arrays
        record.wall_s = time.perf_counter() - self._t0
        _log(logging.INFO, "round %d: accepted %s, rejected %s, dropped %s, declined %s", server_round, outcome.accepted,
             [(r.device_id, r.reason) for r in outcome.rejected], sorted(record.dropped), sorted(record.declined))
        return arrays_to_record(self.global_arrays), MetricRecord({"accepted": float(len(outcome.accepted))})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._messages("evaluate", server_round, self.config.fraction_evaluate, self.config.min_evaluate_devices, grid)

    def aggregate_evaluate(self, server_round, replies):
        from flwr.app import MetricRecord

        record = self._record(server_round)
        for node, msg in self._sort_replies("evaluate", server_round, replies):
            if "metrics" in msg.content:
                record.evaluation[self.name(node)] = {k: float(v) for k, v in msg.content["metrics"].items()}
        record.wall_s = time.perf_counter() - self._t0
        means = {k: record.mean(k) for k in ("top1", "top5", "global-top1", "global-top5")}
        return MetricRecord({k: v for k, v in means.items() if v is not None}) if record.evaluation else None

    def summary(self) -> None:
        _log(logging.INFO, "homebody FedAvg: mode=%s C=%g sigma=%g encoding=%s", self.config.mode, self.config.clip_norm,
             self.config.noise_multiplier, self.config.encoding)

    def _epsilon(self, participations: int) -> float:
        q = float(np.mean(self.sample_rates)) if self.sample_rates and self.config.amplify else 1.0
        return user_epsilon(self.config.noise_multiplier, q, participations, self.config.delta)

    def run(self, grid, num_rounds: int, timeout: float) -> FederationHistory:
        """Run the rounds with the inherited `Strategy.start` loop (train, then evaluate, per round);
        with straggler_grace > 0 on a QuorumGrid, so that rounds go on soon after a device drops out."""
        if self.config.straggler_grace > 0:
            grid = QuorumGrid(grid, lambda n: max(1, min(n, self.config.min_train_devices)), self.config.straggler_grace)
        self.start(grid=grid, initial_arrays=arrays_to_record(self.global_arrays), num_rounds=num_rounds, timeout=timeout)
        return self.history()

    def history(self) -> FederationHistory:
        q = float(np.mean(self.sample_rates)) if self.sample_rates and self.config.amplify else 1.0
        summary = PopulationSummary(  # every round counts for every device, sampled or not (amplification)
            rounds=len(self.rounds), sample_rate=q, noise_multiplier=self.config.noise_multiplier, delta=self.config.delta,
            epsilon=self._epsilon(len(self.rounds)), accountant="pld", devices_seen=len(set(self.node_names.values())),
            participations=dict(self.participations), declined=dict(self.declined),
            rejected=[r for rec in self.rounds.values() for r in rec.rejected],
        )
        _log(logging.INFO, "population summary (user level): %s", json.dumps(summary.to_dict(), default=str))
        return FederationHistory([self.rounds[k] for k in sorted(self.rounds)], dict(self.global_arrays), summary, self.initial_arrays)


class QuorumGrid:
    """Wraps Flower's Grid: `send_and_receive` returns early once enough replies are in.

    Flower waits for every reply or the whole timeout. Here, once `quorum` replies arrived, the
    stragglers get `grace` times the time the quorum took (at least `min_grace_s`) more:
    a device that vanished (killed, offline) costs a round a fraction of its duration instead
    of the full timeout. Every other call goes to the wrapped grid.
    """

    def __init__(self, grid: Any, quorum: Callable[[int], int], grace: float, min_grace_s: float = 5.0, poll_s: float = 1.0) -> None:
        self._grid, self._quorum, self.grace, self.min_grace_s, self.poll_s = grid, quorum, grace, min_grace_s, poll_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable["Message"], *, timeout: float | None = None) -> list["Message"]:
        pending = set(self._grid.push_messages(list(messages)))
        need = min(len(pending), self._quorum(len(pending)))
        start = time.time()
        end = start + (timeout if timeout is not None else 3600.0)
        replies: list["Message"] = []
        quorum_at: float | None = None
        while pending and time.time() < end:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if quorum_at is None and len(replies) >= need:
                quorum_at = time.time()
                end = min(end, quorum_at + max(self.min_grace_s, self.grace * (quorum_at - start)))
            if pending:
                time.sleep(self.poll_s)
        return replies
