"""One device, one round: the function every engine calls (Flower ClientApp, fast engine).

`train_round(base, global_adapter, examples, config, device=...)`:
  1. budget check at user level through privacy's ReleaseGate (declines when spent, writes nothing);
  2. start from the global adapter and train locally with personal/'s `train_adapter`;
  3. delta = local - global over the shared tensors only; clip to C; add N(0, (sigma*C)^2) on the
     device; encode (fp32 / fp16 / int8 with stochastic rounding); check with `check_update`;
  4. commit the release to the device's ledger (unit "user") with the sent bytes' SHA-256 and the
     randomness used (`details["rng"]`).

Noise and stochastic rounding come from the OS CSPRNG (`DeviceRound.rng` defaults to
`privacy.randomness.SecureGenerator`); only simulations pass a seeded generator (`noise_rng` with
a seed), and only a gate built with `allow_seeded_noise=True` records such a round.

Local training inside a round is plain (not DP-SGD): the user-level guarantee comes from the
clip + noise applied to the whole update, which covers every record of the device at once.

Accounting: every round of a run is one Gaussian release (noise multiplier sigma, sensitivity C)
subsampled at the cohort rate q the server announces, for EVERY device of the population, sampled
or not: amplification by sampling only holds if the rounds a device sat out are charged too. A
device learns of a round only when it is sampled, so when it takes part in round r it charges the
rounds since its last charge in this run (`rounds_to_charge`); `settle_run` charges the rounds
after its last participation once the run is over. That amplification holds for whoever sees only
the released global adapters; against the server, which chose the cohort, set
`FederationConfig.amplify = False` (q = 1). See docs/federation.md.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from federation.config import FederationConfig
from federation.update import Arrays, Update, build_update, decode, delta_of, encode, spec_of
from privacy.errors import HomebodyError
from privacy.randomness import OS_CSPRNG, NoiseSource, SecureGenerator, noise_source, rng_kind

if TYPE_CHECKING:
    from personal.adapter import Adapter
    from personal.examples import Example
    from personal.models import BaseModel
    from privacy.accountant import SubsampledGaussian
    from privacy.budget import ReleaseGate

USER = "user"
MECHANISM = {"device": "dp-fedavg-device-noise", "secagg": "dp-fedavg-secagg-share", "central": "dp-fedavg-central"}
DEVICE_ID_HEX = 16
LOG = logging.getLogger("homebody.federation.flower")


def device_identity(public_key) -> str:
    """The id a real device is known by to the server: the first 16 hex digits of the SHA-256 of
    its vault's raw Ed25519 public key. Unique per vault and stable across runs; unlike the
    profile name (personal, and shared by every owner who kept the default) it says nothing
    about the owner."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:DEVICE_ID_HEX]


class DeviceDeclined(HomebodyError):
    """The device will not take part this round (its user-level budget is spent); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DeviceRound:
    """Who a device is in this round and where its ledger lives (never sent)."""

    device_id: str
    round: int
    sample_rate: float = 1.0
    gate: "ReleaseGate | None" = None
    profile: str = "default"
    rng: NoiseSource = field(default_factory=SecureGenerator)  # OS CSPRNG; a seeded one only in simulations
    observe: Callable[[str, Arrays], None] | None = None
    seed: int = 0
    run: str = ""  # the federation run; "" charges each participation as one round (no catch-up)


@dataclass
class RoundResult:
    """What `train_round` produced: the decoded update (what the server will see after decoding),
    the wire form actually sent, and device-local facts (never sent)."""

    update: Update
    wire: object
    epsilon: float | None
    norm_before_clip: float
    num_examples: int

    @property
    def bytes_up(self) -> int:
        return self.wire.nbytes()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def shared_base(name: str, lora_r: int = FederationConfig.lora_r) -> "BaseModel":
    """The frozen base, loaded once per process and LoRA rank (every virtual device in it shares it).

    Keyed by rank too: training wraps a loaded base with LoRA once, so two federations with
    different ranks in one process (tests, benchmarks) each need their own copy.
    """
    from personal.models import load_base

    return load_base(name)


def lora_settings(config: FederationConfig):
    """The LoRA placement used by the shared adapter: top layer only, so lower layers are cached."""
    from personal.adapter import LoraSettings

    return LoraSettings(r=config.lora_r, alpha=2 * config.lora_r, layers=(-1,))


def train_config(config: FederationConfig, epochs: float, seed: int):
    """personal/'s TrainConfig for a local run inside a round."""
    from personal.training import TrainConfig

    return TrainConfig(lora=lora_settings(config), epochs=epochs, batch_size=config.batch_size, lr=config.local_lr, seed=seed)


def initial_adapter(base: "BaseModel", labels: Sequence[str], config: FederationConfig) -> "Adapter":
    """The starting global adapter: LoRA as injected (B = 0: no change to the base) and a zero head."""
    from personal.training import wrap

    model = wrap(base, lora_settings(config))
    model.clear(list(labels))
    return model.export_adapter({"federated": True, "round": 0})


def adapter_from_arrays(base: "BaseModel", arrays: Arrays, labels: Sequence[str], config: FederationConfig) -> "Adapter":
    """Rebuild the global Adapter a device received (identity from the device's own base)."""
    from personal.adapter import Adapter

    return Adapter(base.identity(), list(labels), {k: np.asarray(v, np.float32) for k, v in arrays.items()}, lora_settings(config))


def noise_rng(seed: int | None, server_round: int, stream: int) -> NoiseSource:
    """A device's noise generator for one round: the OS CSPRNG without a seed; with one (simulations
    only), the seeded stream (seed, round, stream) — the same in every engine for the same device."""
    return noise_source(None if seed is None else [seed, server_round, stream])


def round_mechanism(config: FederationConfig, sample_rate: float, rounds: int = 1):
    """The user-level release of `rounds` rounds, as privacy's accountant sees it."""
    from privacy.accountant import SubsampledGaussian

    q = sample_rate if config.amplify else 1.0
    return SubsampledGaussian(noise_multiplier=config.noise_multiplier, sample_rate=min(1.0, max(q, 1e-12)), steps=rounds)


def last_charged_round(gate: "ReleaseGate", profile: str, run: str) -> int:
    """The last round of `run` this device's ledger has charged (0 if none)."""
    rounds = [int(r.details.get("round", 0)) for r in gate.ledger.records(profile, USER) if r.details.get("run") == run]
    return max(rounds, default=0)


def rounds_to_charge(device: DeviceRound) -> int:
    """Rounds this participation pays for: every round since the device's last charge in this run."""
    if not device.run or device.gate is None:
        return 1
    return max(1, device.round - last_charged_round(device.gate, device.profile, device.run))


def settle_run(gate: "ReleaseGate", profile: str, run: str, rounds: int, config: FederationConfig, sample_rate: float,
               artefact_sha256: str, rng: str = OS_CSPRNG) -> float:
    """At the end of a run, charge the rounds after the device's last participation (they released
    global adapters its data could have been sampled into). Returns the device's user-level epsilon.
    ``rng`` names the randomness of the run's noise (a seeded simulation passes "seeded")."""
    owed = rounds - last_charged_round(gate, profile, run)
    if owed > 0 and config.noise_multiplier > 0:
        gate.commit(profile, USER, round_mechanism(config, sample_rate, owed), artefact_sha256=artefact_sha256,
                    mechanism=MECHANISM[config.mode],
                    details={"round": rounds, "run": run, "rounds_charged": owed, "settlement": True, "mode": config.mode,
                             "rng": rng})
    return float(gate.spent(profile, USER))


def train_round(
    base: "BaseModel",
    global_adapter: "Adapter",
    examples: Sequence["Example"],
    config: FederationConfig,
    device: DeviceRound | None = None,
) -> RoundResult:
    """One device's round (see the module docstring). Raises DeviceDeclined when the budget is spent."""
    from personal.training import DPConfig, train_adapter

    device = device or DeviceRound(device_id="device", round=1)
    private, charged, mech = admit_round(device, config)
    result = train_adapter(base, examples, global_adapter.labels, train_config(config, config.local_epochs, device.seed),
                           DPConfig.non_private(), init=global_adapter)
    spec = spec_of(global_adapter.tensors)
    delta = delta_of(result.adapter.tensors, global_adapter.tensors, spec)
    noised, raw_norm = build_update(
        delta, spec, round=device.round, device_id=device.device_id, clip_norm=config.clip_norm,
        sigma=config.device_sigma, rng=device.rng, encoding=config.encoding,
        observe=device.observe,
    )
    wire = encode(noised, device.rng)
    epsilon = None
    if device.gate is not None and not private:
        details = {"round": device.round, "run": device.run, "mode": config.mode, "federated": True}
        device.gate.commit_non_private(device.profile, USER, wire.sha256(), details=details)
        epsilon = float("inf")
    elif device.gate is not None:
        record = device.gate.commit(
            device.profile, USER, mech, artefact_sha256=wire.sha256(), mechanism=MECHANISM[config.mode],
            details={"round": device.round, "run": device.run, "rounds_charged": charged, "clip_norm": config.clip_norm,
                     "device_sigma": config.device_sigma, "encoding": config.encoding, "mode": config.mode,
                     "rng": rng_kind(device.rng)},
        )
        epsilon = float(record.epsilon)
    return RoundResult(decode(wire), wire, epsilon, raw_norm, len(examples))


def admit_round(device: DeviceRound, config: FederationConfig) -> tuple[bool, int, "SubsampledGaussian"]:
    """Before any work: (private?, rounds this release charges, its mechanism). A gated private round
    also passes the gate's randomness check (a real device refuses seeded noise) and budget check
    (DeviceDeclined when spent). Every device round (LoRA, habit scorer) starts here."""
    private = config.noise_multiplier > 0
    charged = rounds_to_charge(device) if private else 1
    mech = round_mechanism(config, device.sample_rate, charged)
    if device.gate is not None and private:
        from privacy.budget import check_rng

        check_rng(rng_kind(device.rng), device.gate.allow_seeded_noise)
        check_budget(device, mech)
    return private, charged, mech


def decline_reason(exc: HomebodyError, device_id: str, rnd: int) -> str:
    """What the server is told when a device declines: DeviceDeclined's own reason (written to be
    sent), else only the error's type. Other errors' wording may name the profile or a path,
    so it is logged here, on the device, and not sent."""
    if isinstance(exc, DeviceDeclined):
        return exc.reason
    LOG.warning("round %d: device %s cannot train: %s", rnd, device_id, exc)
    return f"device {device_id} declines round {rnd}: {type(exc).__name__}"


def check_budget(device: DeviceRound, mech) -> None:
    """The device gate's check for one round; a spent budget becomes a `DeviceDeclined` the server may read."""
    from privacy.budget import BudgetExhausted

    try:
        device.gate.check(device.profile, USER, mech)  # type: ignore[union-attr]
    except BudgetExhausted as exc:
        # The reason goes to the server: the ledger's wording names the profile, so it stays here.
        raise DeviceDeclined(f"device {device.device_id} declines round {device.round}: user-level budget spent") from exc


def split_examples(examples: Sequence["Example"], holdout: float = 0.2) -> tuple[list["Example"], list["Example"]]:
    """Chronological split: the last `holdout` share is held out for evaluation."""
    examples = list(examples)
    n_test = max(1, int(round(len(examples) * holdout))) if len(examples) > 1 else 0
    return examples[: len(examples) - n_test], examples[len(examples) - n_test:]


def topk_accuracy(probs: np.ndarray, labels: Sequence[str], targets: Sequence[str], k: int) -> float:
    """Share of targets among the k most probable labels (0 when there is nothing to score)."""
    if len(targets) == 0:
        return 0.0
    index = {label: i for i, label in enumerate(labels)}
    top = np.argsort(-probs, axis=1)[:, :k]
    hits = [index.get(t, -1) in row for t, row in zip(targets, top)]
    return float(np.mean(hits))


def evaluate_device(
    base: "BaseModel",
    global_adapter: "Adapter",
    train: Sequence["Example"],
    test: Sequence["Example"],
    config: FederationConfig,
    seed: int = 0,
    probs_out: dict | None = None,
) -> dict[str, float]:
    """Top-1/top-5 of the global adapter and of the personal adapter fine-tuned from it locally.

    The personal adapter is trained on the device's own earlier events (never sent anywhere)
    and scored on its held-out later events. `probs_out`, when given, receives the personal
    model's probabilities ("personal": held-out examples x labels) for on-device combination.
    """
    from personal.training import DPConfig, train_adapter, wrap

    test = [e for e in test if e.label is not None]
    out = {"num-test": float(len(test))}
    if not test:
        return out | {"global-top1": 0.0, "global-top5": 0.0, "top1": 0.0, "top5": 0.0}
    labels, texts, targets = global_adapter.labels, [e.text for e in test], [e.label for e in test]
    model = wrap(base, lora_settings(config))
    model.load_adapter(global_adapter)
    probs = model.predict_proba(texts)
    out.update({"global-top1": topk_accuracy(probs, labels, targets, 1), "global-top5": topk_accuracy(probs, labels, targets, 5)})
    usable = [e for e in train if e.label in set(labels)]
    if config.personal_epochs > 0 and usable:
        result = train_adapter(base, usable, labels, train_config(config, config.personal_epochs, seed), DPConfig.non_private(),
                               init=global_adapter)
        model.load_adapter(result.adapter)
        probs = model.predict_proba(texts)
    if probs_out is not None:
        probs_out["personal"] = probs
    out.update({"top1": topk_accuracy(probs, labels, targets, 1), "top5": topk_accuracy(probs, labels, targets, 5)})
    return out
