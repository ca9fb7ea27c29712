"""The ablation predictors of `homebody simulate` (issue 14): what is not used is not trained, each
predictor's ledgers show exactly the guarantee stated for it, and a device with the shared scorer
falls back to its own best counting where counting did better on its training events."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import sqlite_utils

from personal.evaluate import BestCounting, chronological_split
from personal.habits import ScorerShape, initial_weights
from personal.vault import Event
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.ledger import Ledger
from simulations.runner import SimulationConfig, run_simulation

from tests.cli_support import run_homebody

SMALL = dict(dataset="synthetic", synthetic_devices=5, devices=5, model="tiny", max_events=60, rounds=2,
             scorer_rounds=6, scorer_cohort=3)


def _ledgers(vault_dir, unit):
    """Per vault: (its records of `unit`, the ledger's verification problems)."""
    out = []
    for path in sorted(vault_dir.glob("*.vault")):
        db = sqlite_utils.Database(path)
        try:
            out.append((Ledger(db).records(unit=unit), Ledger(db).verify()))
        finally:
            db.close()
    return out


def _artefacts(vault_dir) -> list[int]:
    """Per vault: how many sealed artefacts it holds (adapters, the scorer's shared weights)."""
    out = []
    for path in sorted(vault_dir.glob("*.vault")):
        db = sqlite_utils.Database(path)
        try:
            out.append(db.execute("SELECT count(*) FROM artefacts").fetchone()[0])
        finally:
            db.close()
    return out


def test_habit_predictor_gives_the_scorer_the_whole_epsilon_and_trains_no_lora(tmp_path):
    eps = 3.0
    res = run_simulation(SimulationConfig(**SMALL, epsilon=eps, predictor="habit", out=str(tmp_path)))
    pred, split = res["predictor"], res["privacy"]["budget_split"]
    assert pred["trained"] == ["habit scorer (DP-FedAvg, user-level)"] and pred["lora_rounds"] == 0
    assert len(res["rounds"]) == 1 and res["privacy"]["noise_multiplier"] is None
    scorer = SubsampledGaussian(res["habit_scorer"]["noise_multiplier"], 3 / 5, 6)
    check = SubsampledGaussian(res["habit_scorer"]["check_noise_multiplier"], 1.0, 1)
    guarantee = compute_epsilon([scorer, check], 1e-5, "rdp")
    assert split["lora"] is None and split["habit_scorer"] == pytest.approx(guarantee) == split["total"]
    assert 0.99 * eps <= guarantee <= eps  # the whole epsilon (the scorer's rounds and its check), not a share of it
    ledgers = _ledgers(tmp_path / "vaults", "user")
    assert len(ledgers) == 5
    for records, problems in ledgers:
        assert problems == [] and records
        assert all(r.details["run"].endswith(("-habit-scorer", "-habit-check")) for r in records)  # no LoRA round charged
        assert records[-1].epsilon == pytest.approx(guarantee)
    assert all(d["epsilon"] == pytest.approx(guarantee) for d in res["devices"])
    final = res["final"]
    assert final["top1"] == final["habit_top1"] and "lora_top1" not in final and "combined_top1" not in final
    assert final["global_top1"] is None
    assert _artefacts(tmp_path / "vaults") == [1] * 5  # the scorer's shared weights only
    assert res["planted"]["daily_schedule"]["personalized_top1"] == res["planted"]["daily_schedule"]["habit_top1"]


def test_lora_predictor_runs_no_scorer_and_gives_the_lora_rounds_the_whole_epsilon(tmp_path):
    eps = 3.0
    res = run_simulation(SimulationConfig(**SMALL, epsilon=eps, predictor="lora", out=str(tmp_path)))
    split = res["privacy"]["budget_split"]
    assert res["habit_scorer"]["kind"] == "off" and res["predictor"]["trained"][0].startswith("LoRA rounds")
    lora = SubsampledGaussian(res["privacy"]["noise_multiplier"], 1.0, 2)
    guarantee = compute_epsilon([lora], 1e-5, "rdp")
    assert split["habit_scorer"] is None and split["lora"] == pytest.approx(guarantee) == split["total"]
    assert 0.99 * eps <= guarantee <= eps
    for records, problems in _ledgers(tmp_path / "vaults", "user"):
        assert problems == [] and records
        assert not any(r.details["run"].endswith("-habit-scorer") for r in records)
        assert records[-1].epsilon == pytest.approx(guarantee)
    assert res["final"]["top1"] == res["final"]["lora_top1"]


def test_local_habit_predictor_trains_and_releases_nothing_and_is_each_owners_best_counting(tmp_path):
    from simulations.devices import prepare_devices
    from simulations.populations import load_population, select_devices

    res = run_simulation(SimulationConfig(**SMALL, mode="local", predictor="habit", out=str(tmp_path / "run")))
    assert res["predictor"]["trained"] == [] and len(res["rounds"]) == 1
    for unit in ("user", "record"):
        assert all(records == [] and problems == [] for records, problems in _ledgers(tmp_path / "run" / "vaults", unit))
    assert _artefacts(tmp_path / "run" / "vaults") == [0] * 5  # no local adapter trained
    pop = select_devices(load_population("synthetic", synthetic_devices=5, seed=0), 5)
    devices = {d.user: d for d in prepare_devices(pop, tmp_path / "check", max_events=60)}
    for row in res["devices"]:  # recomputed here with personal.evaluate's per-owner choice
        d = devices[row["user"]]
        best = BestCounting(d.habit_train)
        hits = [best.rank(q)[:1] == [q.target.event] for q in d.habit_queries]
        assert row["top1"] == row["habit_top1"] == pytest.approx(sum(hits) / len(hits))


def _markov_owner() -> list[Event]:
    """An owner whose routine only the previous event tells: coffee -> gym -> read x 4, once a week at
    the same hour, so hour, weekday and slot shares are the overall ones. Most frequent (and the
    smoothed mix, dominated by those shares) say "read" after coffee; Markov says "gym", rightly."""
    cycle = ["coffee", "gym", "read", "read", "read", "read"]
    return [Event("u", datetime(2024, 3, 4, 9) + timedelta(days=7 * i), cycle[i % 6], {}, None) for i in range(36)]


def test_tail_gain_is_the_scorer_top1_minus_best_countings_on_the_last_fifth_of_the_training_events():
    """Hand-computed: 29 training events, fit on the first 23, the last 6 are read, coffee, gym, read,
    read, read (after read, read, coffee, gym, read, read). Best counting on the first 23 is Markov:
    read, read, gym, read, read, read (5 of 6: only the coffee after a read is missed). Initial shared
    weights rank like most frequent: read x 6 (4 of 6). Gain = 4/6 - 5/6."""
    from personal.habit_predictor import tail_gain
    from simulations.habit_sim import habit_log_probs

    labels = ["coffee", "gym", "read", "walk"]
    weights = initial_weights(ScorerShape(tuple(labels)))
    train, queries = chronological_split(_markov_owner(), 0.2)
    fit, tail = chronological_split(train, 0.2)
    assert (len(train), len(fit), len(tail)) == (29, 23, 6)
    assert [q.target.event for q in tail] == ["read", "coffee", "gym", "read", "read", "read"]
    assert BestCounting(fit).choice == "markov"
    assert tail_gain(train, labels, weights) == pytest.approx(4 / 6 - 5 / 6)
    assert tail_gain(train[:16], labels, weights) == 0.0  # at most FEW_EVENTS: the device uses its counts anyway
    # the device itself no longer second-guesses weights it was handed: that is the population's check
    device = SimpleNamespace(habit_train=train, habit_queries=queries)
    top1 = [labels[int(i)] for i in np.argmax(habit_log_probs(device, labels, weights), axis=1)]
    assert set(top1) == {"read"}
    own = [labels[int(i)] for i in np.argmax(habit_log_probs(device, labels, None), axis=1)]
    assert own == [BestCounting(train).rank(q)[0] for q in queries] and "gym" in own


def test_cli_predictor_flag_says_what_was_trained_and_flower_refuses_a_habit_predictor(monkeypatch, capsys, tmp_path):
    code, out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--devices", "4",
                                  "--synthetic-devices", "4", "--rounds", "1", "--max-events", "40",
                                  "--scorer-rounds", "3", "--predictor", "habit", "--out", str(tmp_path / "ok"))
    assert code == 0, err
    assert "trained: habit scorer (DP-FedAvg, user-level)" in out and "personalized (= habit)" in out
    assert "LoRA personal model" not in out and "budget split" in out
    code, out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--engine", "flower",
                                  "--predictor", "habit", "--out", str(tmp_path / "bad"))
    assert code != 0 and "--predictor lora" in err and len(err.strip().splitlines()) == 1, err
