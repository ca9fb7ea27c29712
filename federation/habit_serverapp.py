"""The habit scorer on a Flower ServerApp (run config `model = "habit-scorer"`): DP-FedAvg rounds of
the scorer's shared weights, the population's usefulness check, then the final weights and verdict
broadcast to every device (the ClientApp side and the messages: `federation.habit_clientapp`).

What `run_scorer_flower` does is `run_scorer_federation` then `run_check` (the fast engine's loop),
over Flower messages:
1. every device names itself (its public device id); the devices are ordered by id;
2. `config.rounds` rounds: a fixed-size cohort drawn uniformly (`draw_cohort`; size
   max(ceil(fraction_train * n), min_train_devices), at most n; accounted at q = size / n), the
   server's own `check_update` on every reply, `ScorerServer.aggregate` over the sampled size;
3. the check over all devices: each first settles the scorer rounds it sat out on its ledger
   (`settle_scorer`), then reports its noised gain; the server sums and decides (`habit_check.decide`);
4. the final weights and the verdict go to every device that did not decline; each stores them in its vault.

Budget: the run config's noise multiplier prices the scorer rounds; they get 1 - CHECK_SHARE of the
run's user-level epsilon, so the stated epsilon is theirs / (1 - CHECK_SHARE) and the check's noise is
calibrated for the rest (`check_noise`, as the fast engine's `scorer_plan`; RDP accountant, as the
simulations' gates). Randomness: with `config.seed` (simulations) the server's cohorts and central
noise follow `numpy.random.default_rng([seed, 1])` (scorer) and `[seed, 2]` (check), as in the fast
engine; without it both come from the OS CSPRNG.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from federation.config import FederationConfig, FederationSetupError
from federation.habit_check import CheckResult
from federation.habit_clientapp import CHECK, CHECK_SEED_OFFSET, HELLO, ROUND, STORE
from federation.logs import flower_log as _log
from federation.update import UpdateRejected, check_update, spec_of
from federation.wire import arrays_to_record, content_to_update

if TYPE_CHECKING:
    from flwr.app import Message

ACCOUNTANT = "rdp"


@dataclass
class ScorerHistory:
    """What the server learnt and published: final weights, the verdict, who took part."""

    weights: dict[str, np.ndarray]
    check: CheckResult
    devices: list[str]  # every device id, sorted (the order cohorts index)
    cohorts: list[list[str]] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    stored: list[str] = field(default_factory=list)
    epsilon: float | None = None  # the stated user-level epsilon of the run, check included (None: non-private)
    check_noise_multiplier: float = 0.0


def scorer_cohort(config: FederationConfig, devices: int) -> int:
    """The fixed cohort size: max(ceil(fraction_train * n), min_train_devices), at most n."""
    return min(devices, max(math.ceil(config.fraction_train * devices), config.min_train_devices))


def check_plan(config: FederationConfig, devices: int, q: float) -> tuple[FederationConfig, float | None]:
    """The check's FederationConfig and the run's stated user-level epsilon (None when non-private):
    the scorer rounds' epsilon / (1 - CHECK_SHARE), the check calibrated for the rest."""
    from federation.device import round_mechanism
    from federation.habit_check import CHECK_SHARE, check_config, check_noise
    from privacy.accountant import compute_epsilon

    seed = None if config.seed is None else config.seed + CHECK_SEED_OFFSET
    if config.noise_multiplier <= 0:
        return check_config(0.0, devices, config.delta, config.mode).with_(seed=seed), None
    rounds = round_mechanism(config, q, config.rounds)
    stated = compute_epsilon([rounds], config.delta, ACCOUNTANT) / (1 - CHECK_SHARE)
    sigma = check_noise(stated, config.delta, (rounds,), ACCOUNTANT)
    return check_config(sigma, devices, config.delta, config.mode).with_(seed=seed), stated


def run_scorer_flower(grid: Any, config: FederationConfig, labels: Sequence[str]) -> ScorerHistory:
    """The whole scorer run over Flower's `grid` (module docstring)."""
    from federation.habit_check import decide
    from federation.habit_round import ScorerRun, ScorerServer, draw_cohort
    from personal.habits import ScorerShape, initial_weights

    if config.mode == "secagg":  # the message API has no secure sum: the server would see each 1/sqrt(k) share
        raise FederationSetupError("the habit scorer on Flower runs in mode device or central; secagg runs only in the "
                                   "fast engine (homebody simulate)")
    nodes = _hello(grid, config)
    users = sorted(nodes)
    k = scorer_cohort(config, len(users))
    q = k / len(users)
    run = ScorerRun(rounds=config.rounds, cohort=k, server_lr=config.server_lr, noise_seed=config.seed)
    server = ScorerServer.for_run(initial_weights(ScorerShape(tuple(labels))), config, run)
    pick, noise = _rngs(config.seed, 1)
    out = ScorerHistory({}, CheckResult(0.0, 0.0, 0, False), users)
    base = {"sample-rate": q, "labels": list(labels)}
    for r in range(1, config.rounds + 1):
        cohort = [users[i] for i in draw_cohort(pick, len(users), k)]
        out.cohorts.append(cohort)
        extra = {u: base | {"server-round": r, "device-index": users.index(u)} for u in cohort}
        updates = _collect(grid, nodes, ROUND, server.weights, config, extra, out, r)
        server.aggregate(updates, k, noise)
        _log(logging.INFO, "habit scorer round %d: %d of %d sampled devices sent an update", r, len(updates), k)
    out.weights = server.weights
    check_cfg, out.epsilon = check_plan(config, len(users), q)
    out.check_noise_multiplier = check_cfg.noise_multiplier
    _log(logging.INFO, "habit scorer: %d rounds at q=%.3f, sigma %g; check sigma %g; stated user-level epsilon %s (RDP)",
         config.rounds, q, config.noise_multiplier, check_cfg.noise_multiplier,
         "non-private" if out.epsilon is None else f"{out.epsilon:.3f}")
    scorer = config.to_record() | {"sample-rate": q}
    extra = {u: {"sample-rate": 1.0, "labels": list(labels), "server-round": 1, "device-index": i,
                 "scorer": scorer | {"declined": u in out.declined}} for i, u in enumerate(users)}
    gains = _collect(grid, nodes, CHECK, out.weights, check_cfg, extra, out, 1)
    out.check = decide(sum(float(g["gain"][0]) for g in gains), len(gains), check_cfg, _rngs(config.seed, 2)[1])
    _log(logging.INFO, "habit scorer check: %s", json.dumps(out.check.to_json()))
    out.stored = _store(grid, nodes, [u for u in users if u not in out.declined], out, labels, config)
    return out


def _rngs(seed: int | None, stream: int) -> tuple[Any, Any]:
    """(cohort generator, noise source): one seeded numpy generator for both with a seed (as the fast
    engine), else the OS CSPRNG for both (`privacy.randomness.noise_source`)."""
    from privacy.randomness import noise_source

    rng = noise_source(None if seed is None else [seed, stream])
    return rng, rng


def _send(grid: Any, nodes: dict[str, int], kind: str, contents: dict[str, Any], timeout: float) -> dict[str, "Message"]:
    """Send each device its content; its reply (or error reply) by device id."""
    from flwr.app import Message

    sent = {u: Message(content=c, dst_node_id=nodes[u], message_type=kind) for u, c in contents.items()}
    replies = list(grid.send_and_receive(list(sent.values()), timeout=timeout))
    by_id = {m.metadata.message_id: u for u, m in sent.items()}
    return {by_id[r.metadata.reply_to_message_id]: r for r in replies if r.metadata.reply_to_message_id in by_id}


def _collect(grid: Any, nodes: dict[str, int], kind: str, weights: dict[str, np.ndarray], config: FederationConfig,
             extra: dict[str, dict], out: ScorerHistory, rnd: int) -> list[dict[str, np.ndarray]]:
    """One message round: send the weights and the config (+ per-device `extra`); the checked updates'
    arrays. Declines, error replies and rejected updates are logged and kept in `out`."""
    from flwr.app import ConfigRecord, RecordDict

    from federation.habit_check import SPEC

    spec = spec_of(weights) if kind == ROUND else SPEC
    contents = {}
    for u, more in extra.items():
        records = {"arrays": arrays_to_record(weights),
                   "config": ConfigRecord(config.to_record() | {k: v for k, v in more.items() if k != "scorer"})}
        contents[u] = RecordDict(records | ({"scorer": ConfigRecord(more["scorer"])} if "scorer" in more else {}))
    updates = []
    for u, reply in sorted(_send(grid, nodes, kind, contents, config.round_timeout_s).items()):
        if reply.has_error():
            _log(logging.WARNING, "%s round %d: device %s dropped out (%s)", kind, rnd, u, reply.error.reason)
            continue
        header = reply.content["header"]
        if "declined" in header:
            out.declined[u] = str(header["declined"])
            _log(logging.WARNING, "%s round %d: device %s declined: %s", kind, rnd, u, header["declined"])
            continue
        try:
            update = content_to_update(reply.content)
            check_update(update, spec, config.clip_norm, sigma=config.device_sigma)  # the server's own check
        except UpdateRejected as exc:
            out.rejected[u] = exc.reason
            _log(logging.WARNING, "%s round %d: rejected update from device %s: %s", kind, rnd, u, exc.reason)
            continue
        updates.append(update.arrays)
    return updates


def _hello(grid: Any, config: FederationConfig) -> dict[str, int]:
    """Wait for min_available_devices SuperNodes (up to the round timeout); their device ids -> node ids."""
    from flwr.app import ConfigRecord, Message, RecordDict

    deadline = time.time() + config.round_timeout_s
    while len(ids := list(grid.get_node_ids())) < config.min_available_devices and time.time() < deadline:
        time.sleep(1.0)
    messages = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=HELLO) for n in ids]
    replies = grid.send_and_receive(messages, timeout=config.round_timeout_s)
    nodes = {str(r.content["header"]["device_id"]): r.metadata.src_node_id for r in replies if not r.has_error()}
    if not nodes:
        raise FederationSetupError("no device answered the habit scorer's roll call")
    return nodes


def _store(grid: Any, nodes: dict[str, int], users: list[str], out: ScorerHistory, labels: Sequence[str],
           config: FederationConfig) -> list[str]:
    """Broadcast the final weights and verdict; the devices that confirm they stored them."""
    from flwr.app import ConfigRecord, RecordDict

    record = ConfigRecord({"labels": list(labels), "check": json.dumps(out.check.to_json())})
    contents = {u: RecordDict({"arrays": arrays_to_record(out.weights), "config": record}) for u in users}
    replies = _send(grid, nodes, STORE, contents, config.round_timeout_s)
    return sorted(u for u, r in replies.items() if not r.has_error() and r.content["header"].get("stored"))
