"""The Flower ServerApp and ClientApp (Flower 1.42 message API), and a simulation entry point.

Messages
- server -> device (train, evaluate): {"arrays": ArrayRecord(global shared adapter),
  "config": ConfigRecord(FederationConfig + "server-round", "sample-rate", "labels", "base-sha256")}
- device -> server (train): {"update": ArrayRecord({"flat": all tensors in one array}), "header":
  ConfigRecord(UpdateHeader + names/ndims/dims (+ int8 scales)), "metrics": MetricRecord("bytes-up",
  "epsilon")}, or, when the
  device declines, {"header": ConfigRecord(device_id, declined=<reason>)} and no arrays.
- device -> server (evaluate): {"metrics": MetricRecord(top1, top5, global-top1, global-top5, num-test)}
  and {"header": ConfigRecord(device_id)}.

`server_app` / `client_app` at module level are what `flwr run` loads (see [tool.flwr.app] in
pyproject.toml); the client side reads its device from a vault (`--node-config
'vault="/abs/path" profile="..."'`, passphrase in $HOMEBODY_PASSPHRASE). A real device's
`device_id` is `federation.device.device_identity` of its vault's key: the profile name is
personal and never leaves the device (not in headers, metrics or decline reasons).
`run_simulation(population, config, labels)` runs the same apps in Flower's simulation runtime.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from federation.config import FederationConfig
from federation.server import PopulationSummary, Rejection, aggregate, user_epsilon
from federation.update import Arrays, Update, UpdateRejected, WireUpdate, decode, spec_of
from privacy.errors import HomebodyError
from privacy.randomness import noise_source

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from personal.examples import Example
    from privacy.budget import ReleaseGate
    from privacy.randomness import NoiseSource

LOG = logging.getLogger("homebody.federation.flower")
PASSPHRASE_ENV = "HOMEBODY_PASSPHRASE"
FLAT = "flat"


# ----------------------------------------------------------------------------- records <-> wire
def arrays_to_record(arrays: Arrays) -> "ArrayRecord":
    """Numpy dict -> Flower ArrayRecord (dtypes kept: int8 stays int8)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def record_to_arrays(record: "ArrayRecord") -> Arrays:
    """Flower ArrayRecord -> numpy dict."""
    return {name: array.numpy() for name, array in record.items()}


def wire_to_content(wire: WireUpdate, metrics: dict[str, float]) -> "RecordDict":
    """The reply content of a train message.

    All tensors travel as ONE flat array (names, ranks and dims in the header): Flower adds a
    few hundred bytes of framing per array, which would otherwise eat int8's saving.
    """
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    names = sorted(wire.arrays)
    flat = np.concatenate([np.ravel(wire.arrays[n]) for n in names]) if names else np.zeros(0, np.float32)
    header: dict[str, Any] = dict(wire.header) | {
        "names": names,
        "ndims": [int(np.ndim(wire.arrays[n])) for n in names],
        "dims": [int(d) for n in names for d in np.shape(wire.arrays[n])] or [0],
    }
    if wire.scales:
        header["scales"] = [float(wire.scales[n]) for n in names]
    return RecordDict({"update": arrays_to_record({FLAT: flat}), "header": ConfigRecord(header), "metrics": MetricRecord(metrics)})


def unpack(header: dict[str, Any], flat: np.ndarray) -> WireUpdate:
    """Inverse of `wire_to_content`'s packing; a size mismatch is a 'wrong-shape' rejection."""
    try:
        names, ndims, dims = list(header["names"]), [int(x) for x in header["ndims"]], [int(x) for x in header["dims"]]
        scales = [float(x) for x in header.get("scales", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejected("bad-header", f"header lacks names/ndims/dims ({exc!r})") from exc
    if len(ndims) != len(names) or (scales and len(scales) != len(names)) or sum(ndims) > len(dims):
        raise UpdateRejected("bad-header", "names, ranks, dims and scales do not line up")
    arrays, offset, at = {}, 0, 0
    for name, ndim in zip(names, ndims):
        shape = tuple(dims[at:at + ndim])
        at += ndim
        size = math.prod(shape)
        if offset + size > flat.size:
            raise UpdateRejected("wrong-shape", f"payload has {flat.size} values, header describes more ({name})")
        arrays[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    if offset != flat.size:
        raise UpdateRejected("wrong-shape", f"payload has {flat.size} values, header describes {offset}")
    plain = {k: v for k, v in header.items() if k not in ("names", "ndims", "dims", "scales")}
    return WireUpdate(plain, arrays, dict(zip(names, scales)))


def content_to_update(content: "RecordDict") -> Update:
    """Decode a train reply (malformed -> UpdateRejected 'bad-header' / 'wrong-shape')."""
    try:
        header = dict(content["header"])
        flat = content["update"][FLAT].numpy()
    except (KeyError, TypeError) as exc:
        raise UpdateRejected("bad-header", f"reply lacks update/header records ({exc!r})") from exc
    return decode(unpack(header, np.asarray(flat)))


def content_nbytes(content: "RecordDict") -> int:
    """Bytes the device uploads for this content: every serialised Flower object in its tree."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return int(sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values()))


# ----------------------------------------------------------------------------- device side
@dataclass
class DeviceHandle:
    """One device's data and ledger as a ClientApp sees them."""

    device_id: str
    train: list["Example"]
    test: list["Example"]
    gate: "ReleaseGate | None" = None
    profile: str = "default"
    close: Callable[[], None] = lambda: None
    # Which seeded noise stream the device draws from when the federation has a seed. None: its
    # Flower node id. Simulations give the device's index, so every engine draws the same noise.
    noise_stream: int | None = None
    # Only a simulated device may follow the run's seed. A real device always draws from the OS
    # CSPRNG, whatever seed a server puts in the run config: a noise seed known to the server
    # would let it subtract the noise.
    seeded_noise: bool = False

    def noise_rng(self, seed: int | None, server_round: int, context: "Context") -> "NoiseSource":
        """The device's noise generator for one round (`federation.device.noise_rng`)."""
        from federation.device import noise_rng

        stream = self.noise_stream if self.noise_stream is not None else context.node_id % (2**32)
        return noise_rng(seed if self.seeded_noise else None, server_round, stream)


def run_name(context: "Context") -> str:
    """The run a device's ledger records charge rounds to (Flower's run id)."""
    return f"flower-run-{context.run_id}"


class DeviceSource(Protocol):
    """Where a ClientApp finds the device it runs for."""

    def open(self, context: "Context") -> DeviceHandle: ...


@dataclass
class SimDevice:
    """A simulated device: an id and its chronological examples."""

    device_id: str
    examples: list["Example"]


@dataclass
class PopulationSource:
    """Simulation: node `partition-id` i runs devices[i]; each has its own SQLite ledger in ledger_dir."""

    devices: list[SimDevice]
    ledger_dir: str | None = None
    holdout: float = 0.2
    epsilon_cap: float | None = None

    def open(self, context: "Context") -> DeviceHandle:
        from federation.device import split_examples

        index = int(context.node_config["partition-id"]) % len(self.devices)
        device = self.devices[index]
        train, test = split_examples(device.examples, self.holdout)
        gate, close = (None, lambda: None)
        if self.ledger_dir:
            gate, close = _sim_gate(Path(self.ledger_dir), device.device_id, self.epsilon_cap)
        return DeviceHandle(device.device_id, train, test, gate, device.device_id, close, noise_stream=index,
                            seeded_noise=True)


def _sim_gate(folder: Path, device_id: str, epsilon_cap: float | None) -> tuple["ReleaseGate", Callable[[], None]]:
    """A per-device ledger for a simulated device: its own SQLite file and Ed25519 key
    (and, if given, a user-level policy with that epsilon cap at delta 1e-5). A simulation may run
    seeded for reproducibility, so its gate accepts seeded noise (recorded as such)."""
    import sqlite_utils
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.budget import BudgetPolicy, ReleaseGate

    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / f"{device_id}.key"
    if not key_path.exists():
        key_path.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
    db = sqlite_utils.Database(folder / f"{device_id}.db")
    gate = ReleaseGate(db, signer=Ed25519PrivateKey.from_private_bytes(key_path.read_bytes()), allow_seeded_noise=True)
    if epsilon_cap is not None:
        gate.set_policy(device_id, "user", BudgetPolicy(epsilon_cap=epsilon_cap, delta=1e-5))
    return gate, db.close


@dataclass
class VaultSource:
    """Deployment: the SuperNode's node config names the vault and profile; the passphrase comes
    from the environment variable named by node config `passphrase-env` (default HOMEBODY_PASSPHRASE).

    The device id is derived from the vault's sealed signing key (`device_identity`), never
    from the profile or a name in the node config: two owners who both kept profile `me` are
    two devices to the server, and the profile name is not sent."""

    history: int = 3
    holdout: float = 0.2

    def open(self, context: "Context") -> DeviceHandle:
        from federation.device import device_identity, split_examples
        from personal.examples import events_to_examples
        from personal.vault import Vault
        from privacy.budget import ReleaseGate

        cfg = context.node_config
        env = str(cfg.get("passphrase-env", PASSPHRASE_ENV))
        if env not in os.environ:
            raise FederationSetupError(f"the device's vault passphrase is not in ${env}")
        vault = Vault.open(str(cfg["vault"]), os.environ[env])
        try:  # the handle owns the vault from here on; until it exists, a failure must close it
            profile = str(cfg.get("profile", "default"))
            examples = events_to_examples(vault.events(profile), history=self.history)
            train, test = split_examples(examples, self.holdout)
            signer = vault.signing_key()
            gate = ReleaseGate(vault.db, signer=signer)
        except BaseException:
            vault.close()
            raise
        return DeviceHandle(device_identity(signer.public_key()), train, test, gate, profile, vault.close)


class FederationSetupError(HomebodyError):
    """A federation run cannot start or finish: a ClientApp cannot find its device (raised inside
    Flower, which reports it to the server), or a Flower simulation failed."""


@dataclass
class AuditWriter:
    """On-device audit trail: stores the pre-noise (clipped) update of each round in `folder`.
    It never leaves the device; tests and auditors compare it with what was sent."""

    folder: str

    def for_round(self, device_id: str, round: int) -> Callable[[str, Arrays], None]:
        def observe(stage: str, arrays: Arrays) -> None:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            np.savez(Path(self.folder) / f"{device_id}-r{round}-{stage}.npz", **arrays)

        return observe


@dataclass
class RecordingMod:
    """A ClientApp mod that saves every reply the device sends (arrays as .npz, records as JSON)."""

    folder: str

    def __call__(self, msg: "Message", context: "Context", call_next) -> "Message":
        from flwr.app import ArrayRecord

        reply = call_next(msg, context)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        stem = Path(self.folder) / f"{msg.metadata.message_type}-node{context.node_id}-{uuid.uuid4().hex[:8]}"
        if reply.has_error():
            stem.with_suffix(".error.json").write_text(json.dumps({"reason": reply.error.reason}))
            return reply
        arrays, records = {}, {}
        for key, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                arrays.update({f"{key}/{k}": v for k, v in record_to_arrays(record).items()})
            else:
                records[key] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in record.items()}
        np.savez(stem.with_suffix(".npz"), **arrays)
        stem.with_suffix(".json").write_text(json.dumps(records, default=str))
        return reply


def make_client_app(source: DeviceSource, record_dir: str | None = None, audit: AuditWriter | None = None,
                    train_mods: Sequence[Callable] = ()):
    """The ClientApp: train -> `federation.device.train_round`, evaluate -> `evaluate_device`.

    `record_dir` adds a RecordingMod (outermost: it sees exactly what leaves the device);
    `train_mods` are extra Flower mods on train only (Flower's DP mods break evaluate replies).
    """
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from federation import device as dev

    mods = [RecordingMod(record_dir)] if record_dir else []
    app = ClientApp()
    train_chain = mods + list(train_mods)

    def _global(msg: "Message") -> tuple[FederationConfig, Any, Any, int]:
        raw = msg.content["config"]
        cfg = FederationConfig.from_record(raw)
        base = dev.shared_base(cfg.base, cfg.lora_r)
        if str(raw.get("base-sha256", base.weights_sha256)) != base.weights_sha256:
            raise FederationSetupError(f"server's base {cfg.base} differs from this device's copy")
        adapter = dev.adapter_from_arrays(base, record_to_arrays(msg.content["arrays"]), list(raw["labels"]), cfg)
        return cfg, base, adapter, int(raw["server-round"])

    @app.train(mods=train_chain)
    def train(msg: "Message", context: "Context") -> "Message":
        cfg, base, adapter, rnd = _global(msg)
        handle = source.open(context)
        try:
            rng = handle.noise_rng(cfg.seed, rnd, context)
            observe = audit.for_round(handle.device_id, rnd) if audit else None
            round_ctx = dev.DeviceRound(handle.device_id, rnd, float(msg.content["config"].get("sample-rate", 1.0)),
                                        handle.gate, handle.profile, rng, observe, seed=(cfg.seed or 0) + rnd,
                                        run=run_name(context))
            try:
                result = dev.train_round(base, adapter, handle.train, cfg, round_ctx)
            except HomebodyError as exc:  # budget spent, no usable events...: decline and say why
                reason = _decline_reason(exc, handle.device_id, rnd)
                return Message(RecordDict({"header": ConfigRecord({"device_id": handle.device_id, "declined": reason})}), reply_to=msg)
        finally:
            handle.close()
        content = wire_to_content(result.wire, {})
        nbytes = content_nbytes(content)
        content["metrics"] = MetricRecord({"bytes-up": float(nbytes), "epsilon": -1.0 if result.epsilon is None else result.epsilon})
        return Message(content, reply_to=msg)

    @app.evaluate(mods=mods)
    def evaluate(msg: "Message", context: "Context") -> "Message":
        cfg, base, adapter, rnd = _global(msg)
        handle = source.open(context)
        try:
            metrics = dev.evaluate_device(base, adapter, handle.train, handle.test, cfg, seed=(cfg.seed or 0) + rnd)
        finally:
            handle.close()
        return Message(RecordDict({"metrics": MetricRecord(metrics), "header": ConfigRecord({"device_id": handle.device_id})}), reply_to=msg)

    return app


def _decline_reason(exc: HomebodyError, device_id: str, rnd: int) -> str:
    """What the server is told when a device declines: DeviceDeclined's own reason (written to be
    sent), else only the error's type. Other errors' wording may name the profile or a path,
    so it is logged here, on the device, and not sent."""
    from federation.device import DeviceDeclined

    if isinstance(exc, DeviceDeclined):
        return exc.reason
    LOG.warning("round %d: device %s cannot train: %s", rnd, device_id, exc)
    return f"device {device_id} declines round {rnd}: {type(exc).__name__}"


# ----------------------------------------------------------------------------- server side
@dataclass
class RoundRecord:
    """Per-round outcome as the simulations and the CLI report it."""

    round: int
    sampled: int = 0
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def mean(self, key: str) -> float | None:
        values = [m[key] for m in self.evaluation.values() if key in m]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        eps = list(self.epsilon.values())
        return {
            "round": self.round,
            "top1": self.mean("top1"), "top5": self.mean("top5"),
            "global_top1": self.mean("global-top1"), "global_top5": self.mean("global-top5"),
            "bytes_up_per_device": float(np.mean(list(self.bytes_up.values()))) if self.bytes_up else 0.0,
            "epsilon_max": max(eps) if eps else 0.0,
            "epsilon_median": float(np.median(eps)) if eps else 0.0,
            "sampled": self.sampled, "accepted": list(self.accepted),
            "rejected": [r.__dict__ for r in self.rejected], "dropped": dict(self.dropped),
            "declined": dict(self.declined), "per_device": {k: dict(v) for k, v in self.evaluation.items()},
            "wall_s": self.wall_s,
        }


@dataclass
class FederationHistory:
    """Everything a run produced: rounds, the final global arrays and the population accounting."""

    rounds: list[RoundRecord]
    arrays: Arrays
    summary: PopulationSummary | None = None
    initial_arrays: Arrays = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": [r.to_dict() for r in self.rounds], "summary": self.summary.to_dict() if self.summary else None}


class HomebodyStrategy:
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

    # -- the Strategy interface (duck-typed to flwr.serverapp.strategy.Strategy) -------------
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

    def start(self, grid, num_rounds: int, timeout: float) -> FederationHistory:
        """Run the rounds with Flower's Strategy.start loop (train, then evaluate, per round); with
        straggler_grace > 0 on a QuorumGrid, so that rounds go on soon after a device drops out."""
        from flwr.serverapp.strategy import Strategy

        if self.config.straggler_grace > 0:
            grid = QuorumGrid(grid, lambda n: max(1, min(n, self.config.min_train_devices)), self.config.straggler_grace)
        Strategy.start(self, grid=grid, initial_arrays=arrays_to_record(self.global_arrays), num_rounds=num_rounds, timeout=timeout)  # type: ignore[arg-type]
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


def _log(level: int, fmt: str, *args: Any) -> None:
    """Log through Flower's logger too, so `flwr run --stream` and `flwr log` show it."""
    from flwr.common.logger import log as flwr_log

    flwr_log(level, "[homebody] " + fmt, *args)


@dataclass
class ServerSetup:
    """What the ServerApp needs besides Flower's grid: the config and the public label space."""

    config: FederationConfig
    labels: list[str]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "ServerSetup":
        labels = [s.strip() for s in str(run_config.get("labels", "")).split(",") if s.strip()]
        if not labels:
            raise FederationSetupError("run config `labels` (comma-separated public event vocabulary) is empty")
        return cls(FederationConfig.from_record(run_config), labels)


def make_server_app(setup: ServerSetup | None = None, sink: list | None = None):
    """The ServerApp. Without `setup` it reads the run config (`flwr run`); `sink` receives the history."""
    from flwr.serverapp import ServerApp

    from federation import device as dev

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        chosen = setup or ServerSetup.from_run_config(dict(context.run_config))
        base = dev.shared_base(chosen.config.base, chosen.config.lora_r)
        initial = dev.initial_adapter(base, chosen.labels, chosen.config)
        strategy = HomebodyStrategy(chosen.config, chosen.labels, base.weights_sha256, initial.tensors, chosen.config.seed)
        history = strategy.start(grid, chosen.config.rounds, chosen.config.round_timeout_s)
        if sink is not None:
            sink.append(history)

    return app


server_app = make_server_app()
client_app = make_client_app(VaultSource())


# ----------------------------------------------------------------------------- simulation
def run_simulation(
    population: Sequence[SimDevice],
    config: FederationConfig,
    labels: Sequence[str],
    *,
    ledger_dir: str | None = None,
    epsilon_cap: float | None = None,
    record_dir: str | None = None,
    audit_dir: str | None = None,
    num_cpus: int = 2,
    train_mods: Sequence[Callable] = (),
) -> FederationHistory:
    """Run the ServerApp + ClientApp in Flower's simulation runtime (Ray), one virtual SuperNode
    per device, `config.rounds` rounds. With `ledger_dir` each device keeps a signed ledger there
    (user-level cap `epsilon_cap`, else privacy's default policy). Returns the history (per round: top1/top5 of the
    personalised adapters, global top1/top5, bytes up per device, user-level epsilon per device)."""
    sink: list[FederationHistory] = []
    source = PopulationSource(list(population), ledger_dir, epsilon_cap=epsilon_cap)
    client = make_client_app(source, record_dir, AuditWriter(audit_dir) if audit_dir else None, train_mods)
    server = make_server_app(ServerSetup(config, list(labels)), sink)
    history = run_in_simulation(server, client, len(population), num_cpus, sink)
    if history is None:
        raise FederationSetupError("the Flower simulation ended without a result (see the log above)")
    return history


def run_in_simulation(server: "ServerApp", client: "ClientApp", devices: int, num_cpus: int, sink: list) -> Any:
    """Flower's simulation runtime (Ray): one virtual SuperNode per device, one CPU each, `num_cpus`
    in all. Returns what the ServerApp put in `sink`, or None when it put nothing there."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": num_cpus, "num_gpus": 0}}
    try:
        flwr_run_simulation(server_app=server, client_app=client, num_supernodes=devices, backend_config=backend)
    except HomebodyError:
        raise  # the ServerApp's own error (an unknown base...), re-raised by Flower: already one line for a user
    except Exception as exc:  # Flower re-raises the ServerApp's errors and wraps its runtime's crashes
        LOG.debug("the Flower simulation failed", exc_info=True)
        raise FederationSetupError(f"the Flower simulation failed: {_root_cause(exc)}") from exc
    return sink[0] if sink else None


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a (chained) exception, as `Type: message` on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(f"{type(exc).__name__}: {exc}".split())
