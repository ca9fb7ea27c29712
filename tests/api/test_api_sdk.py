"""The SDK facade on a real vault with the tiny models: record, personalize, suggest, chat, budget, forget."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from tests.api.conftest import PASSPHRASE, PROFILE, open_assistant, owner_events


def test_sdk_round_trip(vault_path):
    from personal.provenance import verify_labelled
    from privacy.budget import BudgetExhausted, BudgetPolicy, ReleaseGate

    with open_assistant(vault_path) as a:
        assert a.count() == 30
        seen = []
        job = a.personalize(noise_multiplier=1.0, epochs=1, batch_size=8,
                            on_progress=lambda j: seen.append((j.state, j.step)))
        result = job.wait(120)
        assert job.state == "done" and result["steps"] == job.total > 0
        assert [s for _, s in seen if s][-1] == job.total  # a callback per step, the last one at the end
        assert 0.5 < result["epsilon"] < 8 and not result["non_private"]

        sug = a.suggest(k=2, predictor="lora")
        assert len(sug.items) == 2 and {e for e, _ in sug.items} <= {"Coffee Shop", "Office", "Park", "Subway"}
        assert "DP adapter" in sug.privacy

        # chit-chat goes to the chat model with the owner's adapter; a habit question is answered from the facts
        reply = a.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
        assert reply.text.startswith(reply.label) and reply.used_adapter
        assert reply.manifest["signature"] and 1 <= reply.completion_tokens <= 4
        assert verify_labelled(reply.text, reply.manifest, a.vault.public_key()).ok
        assert reply.manifest["model"]["adapter_sha256"] == result["adapter_sha256"]
        habit = a.ask("what do I do at 8?")
        assert habit.content.startswith("Around 08:00, your most frequent event is Coffee Shop: 10 of the 10")
        assert verify_labelled(habit.text, habit.manifest, a.vault.public_key()).ok

        record = next(b for b in a.budget() if b.unit == "record")
        assert record.releases == 1 and record.spent == pytest.approx(result["epsilon"]) and record.remaining < 8

        ReleaseGate(a.vault.db, signer=a.vault.signing_key()).set_policy(PROFILE, "record", BudgetPolicy(epsilon_cap=0.5, delta=1e-5))
        with pytest.raises(BudgetExhausted) as info:
            a.personalize(noise_multiplier=1.0, epochs=1, batch_size=8).wait(60)
        assert info.value.remaining == 0 and "0 remains" in str(info.value)
        assert a.count() == 30 and next(b for b in a.budget() if b.unit == "record").releases == 1

        assert a.forget() == 30
        assert a.count() == 0 and not a.vault.has_profile(PROFILE)
        assert a.forget() == 0


def test_concurrent_record_and_chat_from_threads(vault_path):
    """Eight threads record and chat at once: every call succeeds and every event is stored once."""
    with open_assistant(vault_path, chat_batch=4) as a:
        errors, replies = [], []

        def work(i: int) -> None:
            try:
                a.record([{"event": f"Walk {i}", "timestamp": f"2026-02-0{1 + i % 5}T12:00"}] * 3)
                replies.append(a.ask(f"question {i}"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(replies) == 8
        assert all(r.text.startswith(r.label) and not r.used_adapter and r.notes for r in replies)
        assert a.count() == 30 + 24


def test_sdk_refuses_bad_input_without_losing_data(vault_path):
    from personal.assistant import AssistantError, InvalidMessages, JobRunning
    from personal.errors import InvalidEvent
    from personal.training import TrainingError

    with open_assistant(vault_path) as a:
        for bad in ({"event": ""}, {"event": "x", "timestamp": "yesterday"}, {"event": "x", "user": "bob"},
                    {"event": "x", "context": {"a": 1}}, {"event": "x", "colour": "red"}):
            with pytest.raises(InvalidEvent):
                a.record([{"event": "fine"}, bad])  # all or nothing: the good one is not stored either
        for bad in ([], [{"role": "user", "content": "  "}], [{"role": "wizard", "content": "hi"}], "hi",
                    [{"role": "user", "content": [{"type": "image_url"}]}]):
            with pytest.raises(InvalidMessages):
                a.chat(bad)
        with pytest.raises(AssistantError):
            a.ask("hi", max_new_tokens=0)
        with pytest.raises(TrainingError):
            a.personalize(epsilon=-1)
        assert a.count() == 30

        gate = threading.Event()
        job = a.personalize(noise_multiplier=1.0, epochs=1, batch_size=8, on_progress=lambda j: gate.wait(60))
        try:
            with pytest.raises(JobRunning):
                a.forget()  # erasure never races a job that would store an adapter of erased data
            with pytest.raises(JobRunning):
                a.personalize(epsilon=1.0)
        finally:
            gate.set()
        job.wait(120)
        assert a.count() == 30


def test_token_file_is_owner_only(tmp_path):
    from personal.auth import TokenError, create_token, ensure_token, read_token, token_matches, token_path

    vault = tmp_path / "v.db"
    token = create_token(vault)
    assert stat.S_IMODE(token_path(vault).stat().st_mode) == 0o600
    assert read_token(vault) == token and ensure_token(vault) == (token, False)
    with pytest.raises(TokenError):
        create_token(vault)  # never overwritten
    assert token_matches(token, f"Bearer {token}") and not token_matches(token, f"Bearer {token}x")
    assert not token_matches(token, None) and not token_matches(token, f"Basic {token}")
    os.chmod(token_path(vault), 0o644)
    with pytest.raises(TokenError, match="other users"):
        read_token(vault)


def test_vault_init_creates_the_token(tmp_path):
    from personal.auth import read_token

    vault = tmp_path / "v.db"
    env = {**os.environ, "HOMEBODY_PASSPHRASE": PASSPHRASE}
    out = subprocess.run([sys.executable, "-m", "simulations.cli", "vault", "init", "--vault", str(vault), "--fast-kdf"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(read_token(vault)) >= 43 and "API token" in out.stdout


def test_importing_the_sdk_does_not_import_torch():
    code = "import sys; from personal import Assistant; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_owner_events_fixture_is_valid():
    assert len(owner_events(2)) == 6
