"""The habit scorer on a Flower ClientApp: a device's scorer rounds, its usefulness-check report, and
storing the federation's final weights and verdict in its vault.

Message types (custom actions of Flower's train/query categories, routed by `ClientApp`; the server
side is `federation.habit_serverapp`):
- HELLO "query.habit_hello": reply {"header": device_id} (public: every reply's header names it).
- ROUND "train.habit_scorer": {"arrays": the global scorer weights, "config": FederationConfig +
  "server-round", "sample-rate", "labels", "device-index"} -> `federation.habit_round.train_scorer_round`
  on the device's OWN events (`personal.habits.training_batch`); reply: the update's wire ("update":
  one flat array of "w" and "b", "header") or {"header": device_id, declined}.
- CHECK "train.habit_check": {"arrays": final weights, "config": the check's FederationConfig + ...,
  "scorer": the scorer run's config + "sample-rate", "declined"} -> first `settle_scorer` (the
  scorer rounds the device sat out are charged, as `run_scorer_federation` does), then
  `federation.habit_check.check_round`; reply: the one noised number "gain" and the header.
- STORE "query.habit_store": {"arrays": final weights, "config": "labels", "check" (CheckResult JSON)}
  -> `store_scorer` in the vault (what `homebody suggest` ranks with); reply {"header": device_id, stored}.

Every release goes through the device's ReleaseGate and ledger (`federation.habit_round.release`).
Seeded noise only where the DeviceSource allows it (a simulation's; a real vault's gate refuses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from federation.config import FederationConfig, FederationSetupError
from federation.sources import DeviceHandle, DeviceSource, run_name
from federation.wire import record_to_arrays, wire_to_content
from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from flwr.app import Context, Message

HELLO, ROUND, CHECK, STORE = "query.habit_hello", "train.habit_scorer", "train.habit_check", "query.habit_store"
CHECK_SEED_OFFSET = 2**32  # a seeded check's noise streams never coincide with the scorer rounds' (seed, round, device)


def scorer_run(context: "Context") -> str:
    """The ledger's run name of the scorer rounds (Flower's run id)."""
    return f"{run_name(context)}-habit-scorer"


def check_run(context: "Context") -> str:
    """The ledger's run name of the usefulness check."""
    return f"{run_name(context)}-habit-check"


def add_scorer_handlers(app: Any, source: DeviceSource, mods: Sequence[Callable] = ()) -> None:
    """Register the four handlers (module docstring) on `app` (a flwr ClientApp), each behind `mods`."""
    from flwr.app import ConfigRecord, Message, RecordDict

    def header(msg: "Message", fields: dict) -> "Message":
        return Message(RecordDict({"header": ConfigRecord(fields)}), reply_to=msg)

    @app.query("habit_hello", mods=list(mods))
    def hello(msg: "Message", context: "Context") -> "Message":
        handle = source.open(context)
        handle.close()
        return header(msg, {"device_id": handle.device_id})

    @app.train("habit_scorer", mods=list(mods))
    def scorer_round(msg: "Message", context: "Context") -> "Message":
        return _reply(msg, context, source, _scorer_round)

    @app.train("habit_check", mods=list(mods))
    def check(msg: "Message", context: "Context") -> "Message":
        return _reply(msg, context, source, _check)

    @app.query("habit_store", mods=list(mods))
    def store(msg: "Message", context: "Context") -> "Message":
        handle = source.open(context)
        try:
            raw = msg.content["config"]
            _store(handle, record_to_arrays(msg.content["arrays"]), list(raw["labels"]), scorer_run(context), str(raw["check"]))
        finally:
            handle.close()
        return header(msg, {"device_id": handle.device_id, "stored": True})


def _reply(msg: "Message", context: "Context", source: DeviceSource, work: Callable) -> "Message":
    """Open the device, run `work(msg, context, handle)` -> RoundResult, reply with the update's wire
    (and nothing else: no metrics, no statistic), or decline with one reason."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from federation.device import decline_reason

    handle = source.open(context)
    try:
        raw = msg.content["config"]
        if "device-index" in raw:  # the server's order of the devices: a seeded simulation's noise stream
            handle.noise_stream = int(raw["device-index"])
        rnd = int(raw["server-round"])
        try:
            result = work(msg, context, handle)
        except HomebodyError as exc:  # budget spent, no events...: decline and say why
            reason = decline_reason(exc, handle.device_id, rnd)
            return Message(RecordDict({"header": ConfigRecord({"device_id": handle.device_id, "declined": reason})}),
                           reply_to=msg)
    finally:
        handle.close()
    content = wire_to_content(result.wire, {})
    del content["metrics"]
    return Message(content, reply_to=msg)


def _device_round(handle: DeviceHandle, raw: Mapping, cfg: FederationConfig, context: "Context", run: str):
    """The device's DeviceRound for the message's round (its own gate, profile and noise)."""
    from federation.device import DeviceRound

    rnd = int(raw["server-round"])
    return DeviceRound(handle.device_id, rnd, float(raw["sample-rate"]), handle.gate, handle.profile,
                       handle.noise_rng(cfg.seed, rnd, context), run=run)


def _scorer_round(msg: "Message", context: "Context", handle: DeviceHandle):
    """One scorer round on the device's own events."""
    from federation.habit_round import train_scorer_round
    from personal.habits import ScorerShape, training_batch

    raw = msg.content["config"]
    cfg = FederationConfig.from_record(raw)
    batch = training_batch(handle.events, ScorerShape(tuple(raw["labels"])))
    device = _device_round(handle, raw, cfg, context, scorer_run(context))
    return train_scorer_round(record_to_arrays(msg.content["arrays"]), batch, cfg, device)


def _check(msg: "Message", context: "Context", handle: DeviceHandle):
    """Settle the scorer run on the device's ledger, then its usefulness-check report."""
    from federation.habit_check import check_round

    raw = msg.content["config"]
    cfg = FederationConfig.from_record(raw)
    _settle(handle, msg.content["scorer"], context)
    device = _device_round(handle, raw, cfg, context, check_run(context))
    return check_round(handle.events, list(raw["labels"]), record_to_arrays(msg.content["arrays"]), cfg, device)


def _settle(handle: DeviceHandle, scorer: Mapping, context: "Context") -> None:
    """Charge the scorer rounds after the device's last one (`settle_scorer`, as run_scorer_federation)."""
    from federation.device import USER
    from federation.habit_round import ScorerRun, settle_scorer

    if handle.gate is None:
        return
    cfg = FederationConfig.from_record(scorer)
    run = ScorerRun(rounds=cfg.rounds, cohort=1, run=scorer_run(context),
                    noise_seed=cfg.seed if handle.seeded_noise else None)
    mine = [r for r in handle.gate.ledger.records(handle.profile, USER) if r.details.get("run") == run.run]
    last = mine[-1].artefact_sha256 if mine else None
    settle_scorer(handle.gate, handle.profile, cfg, run, float(scorer["sample-rate"]), last, bool(scorer["declined"]))


def _store(handle: DeviceHandle, weights: Mapping[str, np.ndarray], labels: list[str], run: str, check: str) -> None:
    """Keep the final weights and the verdict in the device's vault, with its user-level epsilon."""
    import json

    from federation.device import USER

    if handle.vault is None:
        raise FederationSetupError("this device has no vault to keep the habit scorer in")
    epsilon = float(handle.gate.spent(handle.profile, USER)) if handle.gate is not None else None
    store_scorer(handle.vault, handle.profile, weights, labels, run, epsilon, json.loads(check))


def store_scorer(vault: Any, profile: str, weights: Mapping[str, np.ndarray], labels: Sequence[str], run: str,
                 epsilon: float | None, check: dict) -> None:
    """The scorer artefact `homebody suggest` reads (`personal.predict.habit_probs`): the weights over
    `labels`, metadata {"run", "epsilon" (None when not finite), "check": CheckResult.to_json()}."""
    import math

    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes

    data = weights_to_bytes({k: np.asarray(v, np.float32) for k, v in weights.items()}, list(labels))
    eps = epsilon if epsilon is not None and math.isfinite(epsilon) else None
    vault.put_artefact(profile, ARTEFACT_KIND, ARTEFACT_NAME, data, {"run": run, "epsilon": eps, "check": check})
