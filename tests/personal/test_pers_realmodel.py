"""End to end on the real packaged models (acceptance 2 and 6): minilm-l6 suggests a routine, smollm2-135m answers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from personal.adapter import LoraSettings
from personal.evaluate import MostFrequent, Query, zero_shot_rankings
from personal.examples import context_text
from personal.models import load_base
from personal.personalize import load_adapter, personalize
from personal.predict import ask, history_before, suggest
from personal.training import DPConfig, TrainConfig, wrap
from personal.vault import Event, Vault, VaultConfig
from privacy.budget import ReleaseGate
from tests.personal.pers_helpers import START, routine_owner

pytestmark = pytest.mark.realmodel


def test_minilm_learns_the_gym_routine_with_dp(tmp_path) -> None:
    weeks = 26
    wed_0655 = START + timedelta(weeks=weeks, days=2, hours=6, minutes=55)  # the Wednesday after the data
    assert wed_0655.weekday() == 2
    base = load_base("minilm-l6")
    lora = LoraSettings(r=8, layers=(-1,))
    with Vault.create(tmp_path / "v.db", "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner("ana", weeks=weeks, extra_days=2))
        events = v.events("ana")
        labels = sorted({e.event for e in events})
        history = history_before(events, wed_0655)
        # Before personalization: no adapter to suggest from; neither the base without adapter
        # (zero-shot similarity) nor the frequency prior ranks Gym first.
        pm = wrap(base, lora)
        pm.clear(labels)
        assert zero_shot_rankings(pm, [context_text(history[-3:], wed_0655, {})], labels)[0][0] != "Gym"
        assert MostFrequent(events).rank(Query(history, events[-1]))[0] != "Gym"
        # Seeded noise (a test's opt-in) keeps this real-model check deterministic; real releases use the CSPRNG.
        out = personalize(v, "ana", base, TrainConfig(lora=lora, epochs=5, batch_size=32, lr=3e-2),
                          DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, rng="seeded"), allow_seeded_noise=True)
        assert out.result.epsilon < 8  # within the default budget
        after = suggest(v, "ana", base, wed_0655, k=3)
        assert after.items[0][0] == "Gym", after.line()
        assert after.line().startswith("Wed 06:55 — Gym ") and "DP adapter" in after.privacy
        saturday = suggest(v, "ana", base, START + timedelta(weeks=weeks - 1, days=5, hours=14, minutes=55), k=3)
        assert saturday.items[0][0] in ("Park", "Cinema"), saturday.line()  # a routine, not a constant
        assert ReleaseGate(v.db, signer=v.signing_key()).ledger.records("ana", "record")[0].artefact_sha256 == load_adapter(v, "ana", base).sha256()


def test_smollm2_personalizes_a_few_steps_and_answers_labelled(tmp_path) -> None:
    from personal.provenance import verify_labelled

    base = load_base("smollm2-135m", dtype="bfloat16")
    assert base.kind == "causal" and base.identity()["name"] == "smollm2-135m"
    events = routine_owner("bo", weeks=1)
    events.append(Event("bo", events[-1].timestamp + timedelta(hours=2), "Note", text="Friday evening: pizza with Sam"))
    with Vault.create(tmp_path / "v.db", "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(events)
        cfg = TrainConfig(lora=LoraSettings(r=4, layers=(-1,)), epochs=0.5, batch_size=8, max_length=48)
        out = personalize(v, "bo", base, cfg, DPConfig(noise_multiplier=1.0))
        assert 1 <= out.result.steps <= 4 and out.adapter.base_identity == base.identity()
        # phrasing="model": the adapted model rewrites the grounded answer (kept only if it passes the fact check)
        answer = ask(v, "bo", "What do I usually do on Friday evenings?", base, max_new_tokens=12, phrasing="model")
        assert answer.new_tokens > 0 and answer.labelled.content.strip()
        assert answer.used_adapter == (answer.grounded.phrasing == "model")
        assert str(answer.labelled).startswith("[AI-generated]")
        assert verify_labelled(str(answer.labelled), answer.labelled.manifest, v.public_key()).ok
        assert answer.labelled.manifest  # signed manifest travels with the text
