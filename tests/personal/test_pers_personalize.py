"""The release path on a real vault: ledger epsilon (acceptance 3), budget refusal (4), resume, routine (2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from personal.adapter import LoraSettings
from personal.models import load_base
from personal.personalize import ADAPTER, CHECKPOINT, load_adapter, personalize
from personal.training import DPConfig, TrainConfig
from personal.vault import Vault, VaultConfig
from privacy.budget import BudgetExhausted, BudgetPolicy, ReleaseGate
from tests.personal.pers_helpers import routine_owner

LORA = LoraSettings(r=4, layers=(-1,))


@pytest.fixture(scope="module")
def tiny():
    return load_base("tiny")


def _vault(tmp_path: Path, weeks: int = 3, user: str = "ana") -> Vault:
    v = Vault.create(tmp_path / "v.db", "correct horse", VaultConfig(fast_kdf=True))
    v.add_events(routine_owner(user, weeks=weeks))
    return v


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ledger_epsilon_matches_an_independent_accountant(tmp_path, tiny) -> None:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    with _vault(tmp_path) as v:
        out = personalize(v, "ana", tiny, TrainConfig(lora=LORA, epochs=1, batch_size=16), DPConfig(noise_multiplier=1.2))
        gate = ReleaseGate(v.db, signer=v.signing_key())
        (rec,) = gate.ledger.records("ana", "record")
        stored, meta = v.get_artefact("ana", ADAPTER, tiny.name)
    p = rec.params
    assert (p["noise_multiplier"], p["sample_rate"], p["steps"]) == (1.2, out.plan.sample_rate, out.plan.steps)
    assert rec.artefact_sha256 == hashlib.sha256(stored).hexdigest() == meta["sha256"]
    # Independent: dp-accounting's PLD accountant, built here from the recorded parameters.
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(p["sample_rate"], dp_accounting.GaussianDpEvent(p["noise_multiplier"])), p["steps"])
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    assert rec.epsilon == pytest.approx(acc.get_epsilon(rec.delta), rel=1e-3)
    assert out.result.epsilon == pytest.approx(rec.epsilon, rel=1e-6)


def test_budget_exhausted_refuses_and_changes_nothing(tmp_path, tiny) -> None:
    path = tmp_path / "v.db"
    with _vault(tmp_path) as v:
        ReleaseGate(v.db, signer=v.signing_key()).set_policy("ana", "record", BudgetPolicy(epsilon_cap=0.5, delta=1e-5))
    before = _file_sha(path)
    with Vault.open(path, "correct horse") as v:
        with pytest.raises(BudgetExhausted, match=r"0\.5 remains") as err:
            personalize(v, "ana", tiny, TrainConfig(lora=LORA, epochs=1, batch_size=16), DPConfig(noise_multiplier=0.8))
        assert err.value.remaining == pytest.approx(0.5)
        assert v.list_artefacts("ana") == []
    assert _file_sha(path) == before  # not one byte of the vault changed


def test_interrupt_then_resume_spends_the_budget_once(tmp_path, tiny) -> None:
    cfg = TrainConfig(lora=LORA, epochs=2, batch_size=8)
    dp = DPConfig(noise_multiplier=1.0)
    with _vault(tmp_path) as v:
        def interrupt_at_5(step: int, total: int, loss: float) -> None:
            if step == 5:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            personalize(v, "ana", tiny, cfg, dp, progress=interrupt_at_5, checkpoint_every=3)
        gate = ReleaseGate(v.db, signer=v.signing_key())
        assert gate.ledger.records("ana", "record") == []  # nothing released, nothing spent
        assert (CHECKPOINT, tiny.name) in v.list_artefacts("ana")
        assert (ADAPTER, tiny.name) not in v.list_artefacts("ana")
        seen = []
        out = personalize(v, "ana", tiny, cfg, dp, progress=lambda s, t, l: seen.append(s), checkpoint_every=3)
        assert out.resumed_from == 4  # the step in progress when interrupted is redone
        assert seen[0] == 5 and seen[-1] == out.plan.steps
        (rec,) = gate.ledger.records("ana", "record")
        assert rec.params["steps"] == out.plan.steps  # one release, the planned steps, counted once
        assert (CHECKPOINT, tiny.name) not in v.list_artefacts("ana")
        assert load_adapter(v, "ana", tiny).meta["resumed_from"] == 4
