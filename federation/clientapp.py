"""The ClientApp (Flower 1.42 message API): a device's train and evaluate.

`client_app` at module level is what `flwr run` loads (see [tool.flwr.app.components] in
pyproject.toml); it reads its device from a vault (`--node-config 'vault="/abs/path" profile="..."'`,
passphrase in $HOMEBODY_PASSPHRASE, see `federation.sources.VaultSource`). The messages it
exchanges are described in `federation.wire`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from federation.config import FederationConfig, FederationSetupError
from federation.sources import DeviceSource, VaultSource, run_name
from federation.update import Arrays
from federation.wire import content_nbytes, record_to_arrays, wire_to_content
from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from flwr.app import Context, Message


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
        kind = msg.metadata.message_type.replace(".", "_")  # "train.habit_scorer": no dot, or with_suffix would cut it
        stem = Path(self.folder) / f"{kind}-node{context.node_id}-{uuid.uuid4().hex[:8]}"
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
    """The ClientApp: train -> `federation.device.train_round`, evaluate -> `evaluate_device`, and the
    habit scorer's handlers (`federation.habit_clientapp`, for run config model "habit-scorer").

    `record_dir` adds a RecordingMod (outermost: it sees exactly what leaves the device);
    `train_mods` are extra Flower mods on train only (Flower's DP mods break evaluate replies).
    """
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from federation import device as dev
    from federation.device import decline_reason
    from federation.habit_clientapp import add_scorer_handlers

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
                reason = decline_reason(exc, handle.device_id, rnd)
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

    add_scorer_handlers(app, source, mods)  # model "habit-scorer": federation.habit_clientapp
    return app


client_app = make_client_app(VaultSource())
