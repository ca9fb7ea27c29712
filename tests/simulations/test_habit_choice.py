"""One on-device habit predictor (issue 14 item 3): what `homebody simulate` measures is what
`homebody suggest` ranks with.

`personal.habit_predictor` makes the choice (the shared scorer, if the federation's usefulness
check kept it, unless the device has at most FEW_EVENTS events; otherwise its own best counting). The simulation scores its held-out queries with it; `suggest` applies it
at the query time with every earlier event as training events. Real vaults (fast KDF), a real
seeded federated scorer run, the real CLI.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from personal.evaluate import BestCounting
from personal.habit_predictor import FEW_EVENTS, owner_log_probs
from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, ScorerShape, initial_weights, weights_to_bytes
from personal.predict import suggest_with
from personal.vault import Event, Vault, VaultConfig
from simulations.runner import SimulationConfig, run_simulation

from tests.cli_support import run_homebody

PASS = "pw"
SMALL = dict(dataset="synthetic", synthetic_devices=5, devices=5, model="tiny", max_events=60, rounds=1,
             scorer_rounds=3, scorer_cohort=3, seed=3)


def _population(tmp_path):
    """The seeded synthetic devices of SMALL (their vaults), its labels and the federated scorer's outcome."""
    from simulations.devices import prepare_devices
    from simulations.habit_sim import scorer_plan, train_scorer
    from simulations.populations import load_population, select_devices

    cfg = SimulationConfig(**SMALL, predictor="habit")
    pop = select_devices(load_population("synthetic", synthetic_devices=5, seed=cfg.seed), 5)
    devices = prepare_devices(pop, tmp_path / "devices", max_events=cfg.max_events)
    outcome = train_scorer(cfg, scorer_plan(cfg, len(devices), "check"), devices, pop.labels())
    return devices, list(pop.labels()), outcome


def _sim_ranking(lp: np.ndarray, labels: list[str], n: int) -> list[str]:
    """The simulation's ranking of one query's labels (argsort as predictor_hits does), its first `n`."""
    return [labels[j] for j in np.argsort(-lp, kind="stable")[:n]]


@pytest.mark.parametrize("shared", [False, True], ids=["own-counts", "shared-weights"])
def test_the_simulations_habit_ranking_is_suggests_for_the_same_time_and_history(tmp_path, shared):
    """For every device's first held-out query (history = its training events): the simulation's
    habit log-probabilities rank the labels exactly as suggest_with's habit items, with the same
    probabilities. A guard against the two paths diverging again."""
    devices, labels, outcome = _population(tmp_path)
    weights = outcome.weights  # handed to the device as if the check had kept them
    used = set()
    for d in devices:
        q = d.habit_queries[0]
        assert list(q.history) == list(d.habit_train)
        lp = owner_log_probs(d.habit_train, [q], labels, weights if shared else None)[0]
        path = tmp_path / f"{d.user}.db"
        with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
            v.add_events(list(d.habit_train) + [q.target])  # the owner's events up to and including the query's
            if shared:
                v.put_artefact(d.user, ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes(weights, labels), {"epsilon": 1.0})
            got = suggest_with(v, d.user, "tiny", q.target.timestamp, k=len(labels) + 50, predictor="habit")
        assert got.predictor == "habit"
        ranked = [n for n, _ in got.items if n in labels]
        assert ranked == _sim_ranking(lp, labels, len(ranked)), d.user
        for name, p in got.items:
            if name in labels:
                assert p == pytest.approx(float(np.exp(lp[labels.index(name)])), rel=1e-9, abs=1e-12), (d.user, name)
        used.add("scorer" if "shared weights (" in got.privacy and "better than counting on its population" in got.privacy
                 else got.privacy.split("counting predictor ")[1].split(";")[0])
    # the check means something: the devices' own counting is not only the smoothed mix (which is
    # what suggest used before issue 14 item 3), or the scorer ranked at least one of them
    assert used - {"mix"}, used


@pytest.mark.parametrize("kept", [True, False], ids=["check-kept", "check-not-kept"])
def test_homebody_suggest_follows_the_federations_usefulness_check(tmp_path, monkeypatch, capsys, kept):
    """Coffee -> gym -> read x 4, once a week at the same hour: only the Markov counts know gym follows
    coffee; stored shared weights that rank like most frequent say read. Kept by the check: suggest
    ranks with them (read); not kept: the owner's own best counting (Markov: gym), and it says why."""
    cycle = ["coffee", "gym", "read", "read", "read", "read"]
    events = [Event("u", datetime(2024, 3, 4, 9) + timedelta(days=7 * i), cycle[i % 6]) for i in range(42)]
    history, at = events[:37], events[37].timestamp  # suggest at the time of the 38th event: after a coffee
    assert history[-1].event == "coffee" and len(history) > FEW_EVENTS
    assert BestCounting(history).choice == "markov"
    labels = ("coffee", "gym", "read", "walk")
    path = tmp_path / "u.db"
    check = {"noised_sum": 5.0 if kept else -1.0, "threshold": 2.0, "devices": 100, "kept": kept}
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(events)
        v.put_artefact("u", ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes(initial_weights(ScorerShape(labels)), labels),
                       {"epsilon": 2.0, "check": check})
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    code, out, err = run_homebody(monkeypatch, capsys, "suggest", "--profile", "u", "--vault", str(path), "-k", "2",
                                  "--at", at.isoformat(timespec="minutes"), "--model", "tiny")
    assert code == 0, err
    first, second = [ln for ln in out.splitlines() if ln.strip()][:2]
    if kept:
        assert first.split(" — ")[1].startswith("read "), out
        assert "federated habit scorer's shared weights (user-level ε 2.00" in second
    else:
        assert first.split(" — ")[1].startswith("gym "), out
        assert "counting predictor markov" in second
        assert "usefulness check did not find the shared weights (user-level ε 2.00) better than counting" in second


def test_cold_start_uses_own_counts_at_most_few_events_and_the_scorer_after(tmp_path):
    """With stored shared weights: FEW_EVENTS events or fewer, own counts; one more and the rule compares."""
    labels = ("Coffee Shop", "Gym", "Museum")
    w = initial_weights(ScorerShape(labels))
    w["b"][labels.index("Museum")] = 0.5  # only reorders what the owner never did
    start = datetime(2026, 1, 5, 8)
    events = [Event("c", start + timedelta(days=i), "Coffee Shop" if i % 3 else "Gym") for i in range(FEW_EVENTS + 1)]
    path = tmp_path / "c.db"
    with Vault.create(path, PASS, VaultConfig(fast_kdf=True)) as v:
        v.add_events(events)
        v.put_artefact("c", ARTEFACT_KIND, ARTEFACT_NAME, weights_to_bytes(w, labels), {"epsilon": 1.0})
        cold = suggest_with(v, "c", "tiny", events[-1].timestamp, k=5)  # FEW_EVENTS events before it
        warm = suggest_with(v, "c", "tiny", events[-1].timestamp + timedelta(hours=1), k=5)
    assert {n for n, _ in cold.items} == {"Coffee Shop", "Gym"}  # own counts: no shared-vocabulary event
    assert f"only {FEW_EVENTS} events (≤ {FEW_EVENTS})" in cold.privacy
    assert "Museum" in dict(warm.items) and "better than counting on its population" in warm.privacy


def test_a_seeded_federated_runs_habit_numbers_are_the_device_functions(tmp_path):
    """The engine's per-device habit top-1/top-5 of a seeded run are recomputed exactly from
    personal.habit_predictor.owner_log_probs with the same seeded scorer weights."""
    res = run_simulation(SimulationConfig(**SMALL, predictor="habit", out=str(tmp_path / "run")))
    devices, labels, outcome = _population(tmp_path)
    assert res["habit_scorer"]["check"] == outcome.check.to_json()
    rows = {r["user"]: r for r in res["devices"]}
    assert set(rows) == {d.user for d in devices}
    for d in devices:
        lp = owner_log_probs(d.habit_train, d.habit_queries, labels, outcome.usable)
        order = np.argsort(-lp, axis=1, kind="stable")
        truths = [q.target.event for q in d.habit_queries]
        top = {k: np.mean([labels.index(t) in row[:k] if t in labels else False for t, row in zip(truths, order)])
               for k in (1, 5)}
        assert (rows[d.user]["habit_top1"], rows[d.user]["habit_top5"]) == (top[1], top[5]), d.user
