"""The habit scorer inside `homebody simulate` (issue 14): an honest user-level budget split with the
LoRA rounds on every device's ledger, own counts in local mode, and the numbers reported everywhere."""

from __future__ import annotations

from dataclasses import replace

import sqlite_utils
import pytest

from personal.evaluate import BestCounting
from privacy.accountant import SubsampledGaussian, compute_epsilon
from privacy.ledger import Ledger
from simulations.runner import BadSimulationConfig, SimulationConfig, load_results, run_simulation
from simulations.sweep import markdown, run_row

from tests.cli_support import run_homebody

SMALL = dict(dataset="synthetic", synthetic_devices=5, devices=5, model="tiny", max_events=60, rounds=2, predictor="combined")


def _user_records(vault_dir):
    out = []
    for path in sorted(vault_dir.glob("*.vault")):
        db = sqlite_utils.Database(path)
        try:
            out.append((Ledger(db).records(unit="user"), Ledger(db).verify()))
        finally:
            db.close()
    return out


def test_federated_ledgers_compose_the_scorer_and_the_lora_rounds_within_the_target(tmp_path):
    eps = 3.0
    cfg = SimulationConfig(**SMALL, epsilon=eps, scorer_rounds=6, scorer_cohort=3, out=str(tmp_path))
    res = run_simulation(cfg)
    split = res["privacy"]["budget_split"]
    scorer = res["habit_scorer"]
    # the scorer and its usefulness check took their stated share, the LoRA noise was calibrated
    # after them: composed <= target
    scorer_mech = SubsampledGaussian(scorer["noise_multiplier"], 3 / 5, 6)
    check_mech = SubsampledGaussian(scorer["check_noise_multiplier"], 1.0, 1)
    assert split["habit_scorer"] == pytest.approx(compute_epsilon([scorer_mech, check_mech], 1e-5, "rdp"))
    assert split["habit_scorer"] <= 0.5 * eps
    assert compute_epsilon([scorer_mech], 1e-5, "rdp") <= 0.9 * 0.5 * eps  # the check's 10% left for it
    lora_mech = SubsampledGaussian(res["privacy"]["noise_multiplier"], 1.0, 2)
    total = compute_epsilon([scorer_mech, check_mech, lora_mech], 1e-5, "rdp")
    assert split["total"] == pytest.approx(total) and total <= eps
    assert compute_epsilon([lora_mech], 1e-5, "rdp") > split["habit_scorer"]  # the LoRA rounds got the rest, not all of it
    ledgers = _user_records(tmp_path / "vaults")
    assert len(ledgers) == 5
    for records, problems in ledgers:
        assert problems == []
        runs = {r.details["run"] for r in records}
        assert any(run.endswith("-habit-scorer") for run in runs) and len(runs) == 3
        [check] = [r for r in records if r.details["run"].endswith("-habit-check")]
        assert check.release() == check_mech and check.details["model"] == "habit-scorer-check"
        scorer_steps = sum(r.release().steps for r in records if r.details["run"].endswith("-habit-scorer"))
        assert scorer_steps == 6  # every scorer round charged, sampled or not
        assert all(r.details.get("model") == "habit-scorer" for r in records
                   if r.details["run"].endswith("-habit-scorer") and not r.details.get("settlement"))
        assert records[-1].epsilon == pytest.approx(total) and records[-1].epsilon <= eps
    for d in res["devices"]:
        assert d["epsilon"] == pytest.approx(total)
    # every predictor reported per round, per device, per group; `top1` is the combined prediction
    final = res["final"]
    for key in ("habit_top1", "habit_top5", "lora_top1", "lora_top5", "combined_top1", "combined_top5"):
        assert 0.0 <= final[key] <= 1.0, key
        assert all(d[key] is not None for d in res["devices"]), key
        assert all(key in g for g in res["groups"].values()), key
    assert final["top1"] == final["combined_top1"] and final["top5"] == final["combined_top5"]
    assert final["habit_top1"] > 0.3  # planted daily schedules: the habit predictor finds them
    planted = res["planted"]["daily_schedule"]
    assert {"habit_top1", "lora_top1", "combined_top1", "best_counting_top1", "personalized_top1"} <= set(planted)
    # the sweep's table reads them from results.json, and never mistakes them for baselines
    row = run_row("federated", eps, load_results(tmp_path / "results.json"))
    assert row["habit_top1"] == pytest.approx(final["habit_top1"]) and row["lora_top1"] == pytest.approx(final["lora_top1"])
    for g in row["groups"].values():
        assert not {"habit", "lora", "combined"} & set(g["baselines"])
    table = markdown({"dataset": "synthetic", "devices": 5, "baselines": [], "runs": [row]})
    assert f"| {final['habit_top1']:.3f} |" in table and "habit top-1" in table


def test_local_mode_uses_each_devices_own_counts_and_releases_nothing_for_them(tmp_path):
    from simulations.devices import prepare_devices
    from simulations.populations import load_population, select_devices

    cfg = SimulationConfig(**{**SMALL, "rounds": 1}, mode="local", out=str(tmp_path / "run"))
    res = run_simulation(cfg)
    assert "budget_split" not in res["privacy"] and res["habit_scorer"]["kind"].startswith("own counts")
    for records, problems in _user_records(tmp_path / "run" / "vaults"):
        assert records == [] and problems == []  # nothing user-level: no scorer, no federation
    # the habit number is the device's own best counting (personal.evaluate's per-owner choice), recomputed here
    pop = select_devices(load_population("synthetic", synthetic_devices=5, seed=0), 5)
    devices = {d.user: d for d in prepare_devices(pop, tmp_path / "check", max_events=60)}
    for row in res["devices"]:
        d = devices[row["user"]]
        best = BestCounting(d.habit_train)
        hits = [best.rank(q)[:1] == [q.target.event] for q in d.habit_queries]
        assert row["habit_top1"] == pytest.approx(sum(hits) / len(hits))


def test_lora_noise_is_calibrated_after_the_scorer_release():
    from simulations.engine_fast import federation_config

    cfg = SimulationConfig(**SMALL, epsilon=2.0)
    alone = federation_config(cfg, 5)
    prior = (SubsampledGaussian(8.0, 0.5, 20),)
    after = federation_config(cfg, 5, prior=prior)
    assert after.noise_multiplier > alone.noise_multiplier
    both = compute_epsilon(list(prior) + [SubsampledGaussian(after.noise_multiplier, 1.0, 2)], 1e-5, "rdp")
    assert 0.99 * 2.0 <= both <= 2.0


@pytest.mark.parametrize("field, value", [("predictor", "magic"), ("scorer_share", 1.0), ("scorer_rounds", 0),
                                          ("combine_weight", -1.0), ("scorer_clip", 0.0)])
def test_bad_scorer_settings_are_one_typed_error(field, value):
    with pytest.raises(BadSimulationConfig):
        SimulationConfig(**{field: value}).validate()


def test_cli_summary_shows_the_scorer_and_the_split_and_refuses_a_bad_predictor(monkeypatch, capsys, tmp_path):
    code, out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--devices", "4",
                                  "--synthetic-devices", "4", "--rounds", "1", "--max-events", "40",
                                  "--scorer-rounds", "3", "--predictor", "combined", "--out", str(tmp_path / "ok"))
    assert code == 0, err
    assert "habit scorer (DP-FedAvg, user-level)" in out and "LoRA personal model" in out
    assert "personalized (= combined)" in out and "budget split" in out and "best counting" in out
    code, out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--predictor", "magic",
                                  "--out", str(tmp_path / "bad"))
    assert code != 0 and "--predictor" in err and len(err.strip().splitlines()) == 1, err


def test_a_federated_device_keeps_the_shared_weights_and_suggest_uses_them(tmp_path):
    from personal.habits import ARTEFACT_KIND, ARTEFACT_NAME, HabitError, suggest_from_habits, weights_from_bytes
    from personal.predict import history_before, suggest_from_counts
    from personal.vault import Vault
    from simulations.devices import prepare_devices
    from simulations.habit_sim import scorer_plan, store_weights, train_scorer
    from simulations.populations import load_population, select_devices

    pop = select_devices(load_population("synthetic", synthetic_devices=4, seed=0), 4)
    devices = prepare_devices(pop, tmp_path / "vaults", max_events=50)
    cfg = SimulationConfig(**{**SMALL, "devices": 4}, scorer_rounds=3)
    plan = scorer_plan(cfg, 4, "run-x")
    outcome = train_scorer(cfg, plan, devices, pop.labels())
    spent = outcome.spent
    # kept or not (4 devices: the check cannot tell), the device stores the weights and the verdict;
    # here the verdict is set to "kept" to check that suggest then ranks with the stored weights
    kept = replace(outcome, check=replace(outcome.check, kept=True))
    store_weights(devices, kept, pop.labels(), plan.run.run)
    d = devices[0]
    with Vault.open(d.vault_path, d.passphrase) as vault:
        data, meta = vault.get_artefact(d.user, ARTEFACT_KIND, ARTEFACT_NAME)
        stored, vocab = weights_from_bytes(data)
        assert vocab == tuple(pop.labels()) and meta["epsilon"] == pytest.approx(spent[d.user]) and meta["run"] == "run-x-habit-scorer"
        assert meta["check"] == kept.check.to_json()
        at = d.habit_queries[0].target.timestamp
        out = suggest_from_counts(vault, d.user, at, k=3)
        expected = suggest_from_habits(history_before(vault.events(d.user), at), at, stored, vocab, k=3)
    # the check kept the scorer, so suggest ranks with it (the same softmax, computed via
    # log-probabilities: equal up to rounding)
    assert [n for n, _ in out.items] == [n for n, _ in expected] and "federated habit scorer" in out.privacy
    assert [p for _, p in out.items] == pytest.approx([p for _, p in expected], rel=1e-12)
    for bad in (b"not json", data.replace(b'"w"', b'"x"'), data.replace(b"log_share", b"other")):
        with pytest.raises(HabitError):
            weights_from_bytes(bad)
