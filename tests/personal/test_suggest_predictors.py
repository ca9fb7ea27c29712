"""suggest's predictors (habit, lora, combined) and their default, through the library, the CLI, the SDK and the API.

Real vaults (fast KDF), the tiny encoder base, real DP-SGD for the adapter; the federation's shared
habit weights are a hand-made vault artefact, as `simulations.habit_sim.store_weights` stores them.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from personal.adapter import LoraSettings
from personal.errors import ArtefactNotFound
from personal.habits import (ARTEFACT_KIND, ARTEFACT_NAME, DEFAULT_PREDICTOR, FEATURES, PREDICTORS, HabitError,
                             initial_weights,
                             ScorerShape, weights_to_bytes)
from personal.models import load_base
from personal.personalize import personalize
from personal.predict import habit_probs, suggest, suggest_with
from personal.training import DPConfig, TrainConfig
from personal.vault import Event, Vault, VaultConfig
from simulations import cli
from tests.personal.pers_helpers import routine_owner

PASS = "pw"
MON_7 = datetime(2026, 2, 2, 7, 0)  # a Monday, 07:00: ana's own counts say Gym
CFG = TrainConfig(lora=LoraSettings(r=4, layers=(-1,)), epochs=1, batch_size=16)
SHARED = ("Coffee Shop", "Gym", "Museum", "Office")  # the population's vocabulary: Museum is not one of ana's events


@pytest.fixture(scope="module")
def base():
    return load_base("tiny")


def _vault(path: Path) -> Path:
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner("ana", weeks=4))
    return path


def _store_shared(v: Vault, profile: str, bias: dict[str, float], vocab=SHARED, epsilon: float | None = 1.0,
                  hour: float | None = None, kept: bool | None = None) -> None:
    """A federation's shared scorer weights in the vault: most-frequent weights plus a bias per shared event
    (with `hour`: that weight on the hour-of-day share instead, which ranks ana's routine well) and,
    with `kept`, the federation's usefulness-check verdict stored beside them."""
    w = initial_weights(ScorerShape(vocab))
    if hour is not None:
        w["w"][:] = 0.0
        w["w"][FEATURES.index("log_share_hour")] = hour
    for name, b in bias.items():
        w["b"][vocab.index(name)] = b
    meta = {"run": "t", "epsilon": epsilon}
    if kept is not None:
        meta["check"] = {"noised_sum": 9.0 if kept else -3.0, "threshold": 2.0, "devices": 500, "kept": kept}
    v.put_artefact(profile, ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes(w, vocab), meta)


def _homebody(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["homebody", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_default_is_habit_and_one_constant():
    assert DEFAULT_PREDICTOR == "habit" and set(PREDICTORS) == {"habit", "lora", "combined"}


def test_library_predictors_without_and_with_an_adapter(tmp_path, base):
    with Vault.open(_vault(tmp_path / "v.db"), PASS) as v:
        default = suggest_with(v, "ana", base, MON_7, k=3)
        assert default.predictor == DEFAULT_PREDICTOR == "habit" and default.items[0][0] == "Gym"
        assert "nothing released" in default.privacy
        with pytest.raises(ArtefactNotFound, match="no adapter for tiny"):
            suggest_with(v, "ana", base, MON_7, predictor="lora")
        fallback = suggest_with(v, "ana", "tiny", MON_7, k=3, predictor="combined")  # a name: never loaded
        assert fallback.predictor == "habit" and fallback.items == default.items
        assert fallback.privacy.startswith("combined fell back to habit: no adapter for tiny")
        with pytest.raises(HabitError, match="unknown predictor"):
            suggest_with(v, "ana", base, MON_7, predictor="markov")

        personalize(v, "ana", base, CFG, DPConfig(noise_multiplier=1.0))
        lora = suggest_with(v, "ana", base, MON_7, k=3, predictor="lora")
        assert lora.predictor == "lora" and lora.privacy.startswith("DP adapter (record-level epsilon")
        combined = suggest_with(v, "ana", base, MON_7, k=10, predictor="combined")
        assert combined.predictor == "combined" and "habit: own habit counts" in combined.privacy
        assert "adapter: DP adapter" in combined.privacy

        # the formula, computed here on its own: log p_habit + 1.0 * log p_adapter, normalised over the union
        names, p_habit, _ = habit_probs(v, "ana", MON_7)
        p_lora = dict(suggest(v, "ana", base, MON_7, k=100).items)
        union = sorted(set(names) | set(p_lora))
        h = dict(zip(names, p_habit))
        z = np.array([math.log(h[n]) + math.log(max(p_lora.get(n, 0.0), 1e-12)) for n in union])
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        got = dict(combined.items)
        assert set(got) == set(union)
        for n, p in zip(union, expected):
            assert got[n] == pytest.approx(p, rel=1e-6)
        assert suggest_with(v, "ana", base, MON_7, k=3).items == default.items  # the default still reads counts only


def test_stored_shared_weights_rank_by_default_and_name_their_epsilon(tmp_path, base):
    with Vault.open(_vault(tmp_path / "v.db"), PASS) as v:
        own = suggest_with(v, "ana", base, MON_7, k=7)
        _store_shared(v, "ana", {"Museum": 2.0}, hour=3.0)
        shared = suggest_with(v, "ana", base, MON_7, k=7)
    assert own.items[0][0] == "Gym" and "Museum" not in dict(own.items)
    assert shared.items[0][0] == "Gym" and "Museum" in dict(shared.items)  # the shared vocabulary is ranked too
    assert shared.items != own.items
    assert shared.predictor == "habit" and "user-level ε 1.00" in shared.privacy
    assert "found them better than counting on its population" in shared.privacy and "never left this device" in shared.privacy


def test_shared_weights_the_federations_check_did_not_keep_are_not_used(tmp_path, base):
    """Issue 14: the population's usefulness check decides (before it, Museum came first here)."""
    with Vault.open(_vault(tmp_path / "v.db"), PASS) as v:
        own = suggest_with(v, "ana", base, MON_7, k=7)
        _store_shared(v, "ana", {"Museum": 12.0}, kept=False)  # most-frequent weights that push a never-seen event first
        shared = suggest_with(v, "ana", base, MON_7, k=7)
        _store_shared(v, "ana", {"Museum": 12.0}, kept=True)
        kept = suggest_with(v, "ana", base, MON_7, k=7)
    assert shared.items == own.items and shared.items[0][0] == "Gym"
    assert shared.privacy.startswith("own habit counts on this device (counting predictor mix")
    assert "usefulness check did not find the shared weights (user-level ε 1.00) better than counting" in shared.privacy
    assert kept.items[0][0] == "Museum"  # kept: the device ranks with what the federation learnt


def test_cold_start_uses_its_own_counts_even_with_shared_weights(tmp_path, base):
    path = _vault(tmp_path / "v.db")
    with Vault.open(path, PASS) as v:
        v.add_events([Event("new", datetime(2026, 1, 30, 8, 10), "Coffee Shop"),
                      Event("new", datetime(2026, 1, 31, 8, 20), "Coffee Shop")])
        alone = suggest_with(v, "new", base, MON_7, k=4)
        early = suggest_with(v, "new", base, datetime(2026, 1, 1, 7, 0))  # before the owner's first event
        _store_shared(v, "new", {"Office": 2.0, "Gym": 1.0})
        shared = suggest_with(v, "new", base, MON_7, k=4)
    assert [n for n, _ in alone.items] == ["Coffee Shop"]  # two events: counting knows one name only
    assert early.line() == "Thu 07:00 — nothing to suggest yet (no events before this time)"
    # at most FEW_EVENTS events: too few to check the shared weights on, so the owner's own counts
    # (as in the simulations; before issue 14 item 3 suggest ranked the shared vocabulary here)
    assert shared.items == alone.items
    assert "only 2 events (≤ 16): the shared weights (user-level ε 1.00) are not used" in shared.privacy


def test_shared_weights_of_another_population_are_refused(tmp_path, base, monkeypatch, capsys):
    path = _vault(tmp_path / "v.db")
    with Vault.open(path, PASS) as v:
        _store_shared(v, "ana", {}, vocab=("Bar", "Museum"))
        with pytest.raises(HabitError, match="none of this profile's 6"):
            suggest_with(v, "ana", base, MON_7)
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    code, _, err = _homebody(monkeypatch, capsys, "suggest", "--profile", "ana", "--vault", str(path))
    assert code == 1 and len(_lines(err)) == 1 and "another population" in err, err
    with Vault.open(path, PASS) as v:  # shared weights whose bias does not cover their vocabulary
        doc = json.loads(weights_to_bytes(initial_weights(ScorerShape(SHARED)), SHARED))
        doc["b"] = doc["b"][:2]
        v.put_artefact("ana", ARTEFACT_KIND, ARTEFACT_NAME, json.dumps(doc).encode(), {"epsilon": 1.0})
    code, _, err = _homebody(monkeypatch, capsys, "suggest", "--profile", "ana", "--vault", str(path))
    assert code == 1 and len(_lines(err)) == 1 and "wrong sizes" in err, err


def test_cli_predictors_habits_alias_and_personalize_says_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    path = str(_vault(tmp_path / "v.db"))
    run = lambda *a: _homebody(monkeypatch, capsys, "suggest", "--profile", "ana", "--at", "2026-02-02T07:00",  # noqa: E731
                               "-k", "2", "--model", "tiny", "--vault", path, *a)
    code, out, err = run()
    assert code == 0, err
    first, second = _lines(out)
    assert first.startswith("Mon 07:00 — Gym ") and second.startswith("predictor habit — own habit counts")
    assert run("--habits")[1] == out == run("--predictor", "habit")[1]  # the deprecated alias
    code, _, err = run("--habits", "--predictor", "lora")
    assert code == 1 and len(_lines(err)) == 1 and "contradicts" in err
    code, _, err = run("--predictor", "bogus")
    assert code == 1 and len(_lines(err)) == 1 and "unknown predictor 'bogus'" in err
    code, _, err = run("--predictor", "lora")
    assert code == 1 and len(_lines(err)) == 1 and "no adapter for tiny" in err
    code, out, _ = run("--predictor", "combined")
    assert code == 0 and _lines(out)[0] == first and "combined fell back to habit: no adapter for tiny" in out

    code, out, err = _homebody(monkeypatch, capsys, "personalize", "--profile", "ana", "--model", "tiny",
                               "--noise-multiplier", "1.0", "--epochs", "1", "--vault", path)
    assert code == 0, err
    assert "`homebody suggest` ranks by default with predictor habit: your own habit counts" in out
    code, out, _ = run("--predictor", "lora")
    assert code == 0 and "predictor lora — DP adapter (record-level epsilon" in out
    code, out, _ = run("--predictor", "combined")
    assert code == 0 and "predictor combined — habit: own habit counts" in out and "adapter: DP adapter" in out


def test_sdk_and_api_predictors(tmp_path):
    from personal.assistant import Assistant, AssistantError
    from personal.auth import ensure_token
    from personal.server import start_in_thread

    path = _vault(tmp_path / "v.db")
    with pytest.raises(AssistantError, match="predictor"):
        Assistant.open(path, PASS, "ana", "tiny", predictor="markov")
    with Assistant.open(path, PASS, "ana", "tiny", max_new_tokens=2) as a:
        assert a.suggest(MON_7, k=2).predictor == DEFAULT_PREDICTOR
        with pytest.raises(ArtefactNotFound):
            a.suggest(MON_7, predictor="lora")
        assert a.suggest(MON_7, predictor="combined").privacy.startswith("combined fell back to habit")
        token, _ = ensure_token(path)
        server, url = start_in_thread(a, token)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                at = {"at": "2026-02-02T07:00", "k": 2}
                r = c.get("/suggestions", params=at)
                assert r.status_code == 200 and r.json()["predictor"] == "habit", r.text
                assert r.json()["items"][0]["event"] == "Gym"
                r = c.get("/suggestions", params={**at, "predictor": "lora"})
                assert r.status_code == 409 and r.json()["error"]["type"] == "ArtefactNotFound", r.text
                r = c.get("/suggestions", params={**at, "predictor": "combined"})
                assert r.status_code == 200 and r.json()["privacy"].startswith("combined fell back to habit")
                assert c.get("/suggestions", params={**at, "predictor": "markov"}).status_code == 422
                a.personalize(noise_multiplier=1.0, epochs=1, batch_size=8, background=False)
                r = c.get("/suggestions", params={**at, "predictor": "combined"})
                assert r.status_code == 200 and r.json()["predictor"] == "combined", r.text
                with Vault.open(path, PASS) as other:  # a second connection, as another process would
                    _store_shared(other, "ana", {}, vocab=("Bar", "Museum"))
                r = c.get("/suggestions", params=at)
                assert r.status_code == 409 and r.json()["error"]["type"] == "HabitError", r.text
        finally:
            server.should_exit = True
            server.thread.join(10)
        assert a.suggest(MON_7, predictor="lora").predictor == "lora"
    with Assistant.open(path, PASS, "ana", "tiny", predictor="lora") as a:  # the config's predictor
        assert a.suggest(MON_7).predictor == "lora"


def test_serve_refuses_an_unknown_default_predictor(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    path = str(_vault(tmp_path / "v.db"))
    code, _, err = _homebody(monkeypatch, capsys, "serve", "--vault", path, "--port", "0", "--predictor", "markov")
    assert code == 1 and len(_lines(err)) == 1 and "unknown predictor 'markov'" in err, err
    assert not Path(path + ".token").exists()  # refused before anything was created
