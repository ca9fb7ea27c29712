"""The release path for one profile: budget check → DP training → ledger commit → sealed adapter.

``personalize`` reads the profile's events from the vault, plans the DP release
(``SubsampledGaussian(z, q, steps)``, calibrated at the budget policy's delta with the gate's
accountant), asks the ``ReleaseGate`` whether the budget allows it
(``BudgetExhausted`` with the remaining budget otherwise, before any work and without writing
anything), trains, appends the release to the signed ledger and stores the adapter sealed in the
vault (kind ``"adapter"``, name = the base's name).

Interrupt and resume — the choice: the ledger is committed ONCE, at the end, for the whole
planned mechanism. While training, a checkpoint (adapter tensors + steps done + a run id that
hashes the examples, the plan, the LoRA settings and the base) is sealed in the vault as kind
``"checkpoint"``. A checkpoint is never a release: ``suggest``/``ask`` only read ``"adapter"``
artefacts, and nothing leaves the device. Running ``personalize`` again with the same data and
settings resumes from the checkpoint and runs only the remaining steps of the SAME mechanism;
the commit at the end then records exactly that mechanism once, so no step is paid twice. If the
events or settings changed, the run id differs, the stale checkpoint is discarded (it was never
released, so it cost nothing) and a fresh run starts. Sampling randomness is fresh after a resume
(each DP step's guarantee does not depend on earlier draws); optimizer moments restart.

Order at the end: ledger commit first, then the adapter is stored. If storing fails after the
commit, budget was spent for an adapter that is lost — the safe failure; the reverse order could
leave an unaccounted release.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from personal.adapter import Adapter, AdapterError, LoraSettings
from personal.examples import events_to_examples, label_space
from personal.models import BaseModel
from personal.training import (DEFAULT_EPSILON, DPConfig, MechanismPlan, TrainConfig, TrainingError, TrainResult, plan_mechanism,
                               train_adapter, usable_examples)

if TYPE_CHECKING:
    from personal.vault import Vault
    from privacy.ledger import LedgerRecord

ADAPTER, CHECKPOINT = "adapter", "checkpoint"
UNIT = "record"


@dataclass
class PersonalizeResult:
    """The stored adapter, the training result, the release plan (None if non-private), where it resumed."""

    adapter: Adapter
    result: TrainResult
    plan: MechanismPlan | None
    resumed_from: int

    @property
    def privacy_label(self) -> str:
        """The guarantee in one line, or NON-PRIVATE."""
        return self.result.privacy_label


def release_configs(epsilon: float | None = None, noise_multiplier: float | None = None, non_private: bool = False, *,
                    epochs: float = TrainConfig.epochs, batch_size: int = TrainConfig.batch_size, lr: float = TrainConfig.lr,
                    max_grad_norm: float = DPConfig.max_grad_norm,
                    lora: LoraSettings | None = None) -> tuple[TrainConfig, DPConfig]:
    """The (TrainConfig, DPConfig) of one personalization: the one builder of the CLI, the SDK and the API.

    A ``noise_multiplier`` replaces the target epsilon; with neither, the target is
    ``DEFAULT_EPSILON``; ``non_private`` trains without DP. Every setting not given is the
    dataclasses' default (``lora``: ``TrainConfig``'s placement). Raises ``TrainingError``.
    """
    if non_private:
        dp = DPConfig.non_private()
    elif noise_multiplier is not None:
        dp = DPConfig(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm)
    else:
        dp = DPConfig(epsilon=DEFAULT_EPSILON if epsilon is None else epsilon, max_grad_norm=max_grad_norm)
    dp.validate()
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    return (cfg if lora is None else replace(cfg, lora=lora)), dp


def run_id(base: BaseModel, examples, plan: MechanismPlan | None, cfg: TrainConfig, dp: DPConfig) -> str:
    """Identifies a run: same data, same settings, same base → same id (resume allowed)."""
    h = hashlib.sha256()
    h.update(json.dumps(base.identity(), sort_keys=True).encode())
    h.update(json.dumps([cfg.lora.to_dict(), cfg.epochs, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.max_length,
                         cfg.seed, dp.enabled, dp.max_grad_norm, dp.delta, dp.rng], default=str).encode())
    if plan is not None:
        h.update(json.dumps([plan.noise_multiplier, plan.sample_rate, plan.steps]).encode())
    for e in examples:
        h.update(json.dumps([e.text, e.label, e.kind]).encode())
    return h.hexdigest()


def _load_checkpoint(vault: "Vault", profile: str, name: str, rid: str) -> tuple[Adapter | None, int]:
    from personal.errors import ArtefactNotFound

    try:
        data, meta = vault.get_artefact(profile, CHECKPOINT, name)
    except ArtefactNotFound:
        return None, 0
    if meta.get("run_id") != rid:
        return None, 0
    try:
        return Adapter.from_bytes(data), int(meta["steps_done"])
    except (AdapterError, KeyError, ValueError):
        return None, 0


def personalize(
    vault: "Vault",
    profile: str,
    base: BaseModel,
    cfg: TrainConfig = TrainConfig(),
    dp: DPConfig = DPConfig(epsilon=DEFAULT_EPSILON),
    *,
    history: int = 3,
    progress: Callable[[int, int, float], None] | None = None,
    checkpoint_every: int = 25,
    allow_seeded_noise: bool = False,
) -> PersonalizeResult:
    """Personalise ``base`` for ``profile``: check → train (resumable) → commit → store sealed.

    The noise and sampling come from ``dp.rng`` (the OS CSPRNG by default); a ``"seeded"`` run is
    refused before any work unless ``allow_seeded_noise`` (tests that need reproducible runs).
    """
    from privacy.budget import ReleaseGate, check_rng

    events = vault.events(profile)
    if len(events) < 2:
        raise TrainingError(f"profile {profile!r} has {len(events)} event(s): need at least 2 to learn from")
    labels = label_space(events)
    examples = usable_examples(base, events_to_examples(events, history), labels)
    gate = ReleaseGate(vault.db, signer=vault.signing_key(), allow_seeded_noise=allow_seeded_noise)
    if dp.enabled:  # the budget policy's delta and the gate's accountant govern the release
        dp = replace(dp, delta=gate.policy(profile, UNIT).delta, accountant=gate.accountant)
    plan = plan_mechanism(len(examples), cfg, dp) if dp.enabled else None
    if plan is not None:
        check_rng(dp.rng, gate.allow_seeded_noise)  # SeededNoiseRefused before any work
        gate.check(profile, UNIT, plan.mechanism())  # raises BudgetExhausted; writes nothing
    rid = run_id(base, examples, plan, cfg, dp)
    init, start = _load_checkpoint(vault, profile, base.name, rid)

    def save_checkpoint(step: int, adapter: Adapter) -> None:
        vault.put_artefact(profile, CHECKPOINT, base.name, adapter.to_bytes(), {"run_id": rid, "steps_done": step})

    res = train_adapter(base, examples, labels, cfg, dp, init=init, start_step=start, plan=plan, progress=progress,
                        checkpoint=save_checkpoint, checkpoint_every=checkpoint_every)
    adapter = res.adapter
    adapter.meta.update(profile_events=len(events), resumed_from=start, history=history)
    digest = adapter.sha256()
    details = {"model": base.name, "base_sha256": base.weights_sha256, "examples": len(examples),
               "max_grad_norm": dp.max_grad_norm, "lora": cfg.lora.to_dict(), "resumed_from": start}
    if plan is not None:
        details["rng"] = dp.rng  # noise and sampling; a real gate refuses "seeded"
        gate.commit(profile, UNIT, plan.mechanism(), artefact_sha256=digest, details=details)
    else:
        gate.commit_non_private(profile, UNIT, artefact_sha256=digest, details=details)
    # Bound to what the ledger now holds (read back), not to what was sent to it.
    store_released(vault, profile, base.name, adapter.to_bytes(),
                   {"sha256": digest, "non_private": plan is None, "epsilon": res.epsilon, "delta": res.delta,
                    "steps": res.steps, "labels": len(labels)})
    if init is not None or res.steps > checkpoint_every:
        _drop_checkpoint(vault, profile, base.name)
    return PersonalizeResult(adapter, res, plan, start)


def _drop_checkpoint(vault: "Vault", profile: str, name: str) -> None:
    from personal.errors import ArtefactNotFound

    try:
        vault.delete_artefact(profile, CHECKPOINT, name)
    except ArtefactNotFound:
        pass


def released_record(vault: "Vault", profile: str, model: str) -> "LedgerRecord | None":
    """The latest ledger record releasing ``profile``'s adapter for base ``model`` (None if there is none).

    The one place personal/ reads the ledger for artefact binding (through its public read API).
    """
    from privacy.ledger import Ledger

    for record in reversed(Ledger(vault.db, signer=vault.signing_key()).records(profile, UNIT)):
        if record.details.get("model") == model:
            return record
    return None


def store_released(vault: "Vault", profile: str, model: str, data: bytes, meta: dict) -> None:
    """Store an adapter just released: its bytes must hash to its ledger record's ``artefact_sha256``."""
    from personal.errors import ArtefactMismatch

    record = released_record(vault, profile, model)
    if record is None or hashlib.sha256(data).hexdigest() != record.artefact_sha256:
        raise ArtefactMismatch(f"adapter {model} of profile {profile!r} does not hash to the ledger record that released it; "
                               "nothing stored")
    vault.put_artefact(profile, ADAPTER, model, data, {**meta, "ledger_seq": record.seq})


def load_adapter(vault: "Vault", profile: str, base: BaseModel) -> Adapter:
    """The profile's released adapter for ``base``: bound to its ledger record, checked against the base.

    A stored adapter whose SHA-256 is not the ``artefact_sha256`` of the latest ledger record that
    released one for this profile and base (e.g. a ciphertext copied in from another copy of the
    vault, which opens with the same keys) is refused with ``ArtefactMismatch``.
    """
    from personal.errors import ArtefactMismatch, ArtefactNotFound

    try:
        data, _ = vault.get_artefact(profile, ADAPTER, base.name)
    except ArtefactNotFound as exc:
        raise ArtefactNotFound(f"profile {profile!r} has no adapter for {base.name}: run `homebody personalize` first") from exc
    record = released_record(vault, profile, base.name)
    if record is None:
        raise ArtefactMismatch(f"adapter {base.name} of profile {profile!r} refused: no ledger record released it")
    if hashlib.sha256(data).hexdigest() != record.artefact_sha256:
        raise ArtefactMismatch(f"adapter {base.name} of profile {profile!r} refused: its SHA-256 is not the one the "
                               "ledger recorded at its release (swapped or replaced); personalize again")
    adapter = Adapter.from_bytes(data)
    adapter.check_base(base.identity())
    return adapter
