"""End to end on the real stack (tiny random base): the demo's code path, a user's events file,
Ctrl-C, and the fast engine agreeing with the Flower engine."""

from __future__ import annotations

import json

import pytest

from simulations.runner import ROUND_KEYS, SimulationConfig, load_results, run_simulation

from tests.cli_support import run_homebody

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_schema(results: dict) -> None:
    for key in ("config", "rounds", "baselines", "final", "devices", "privacy", "plots", "audit"):
        assert key in results, key
    assert results["status"] == "complete"
    for row in results["rounds"] + [results["final"]]:
        for key in ROUND_KEYS:
            assert key in row, key
    assert set(results["baselines"]) >= {"most_frequent_top1", "markov_top1"}
    assert results["config"]["epsilon_unit"] in ("user", "record")


def test_demo_code_path_writes_results_plots_and_report(monkeypatch, capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_homebody(monkeypatch, capsys, "demo", "--skip-vault", "--model", "tiny", "--devices", "4",
                             "--rounds", "2", "--max-events", "80", "--out", str(out))
    assert code == 0, err
    results = load_results(out / "results.json")
    _check_schema(results)
    # the default predictor (habit): the scorer's DP-FedAvg run, then one evaluation; no LoRA round
    assert [r["round"] for r in results["rounds"]] == [1] and results["predictor"]["predictor"] == "habit"
    assert results["population"]["devices"] == 4 and len(results["devices"]) == 4
    assert results["privacy"]["private"] and 7.9 < results["final"]["epsilon_max"] <= 8.0
    assert set(results["planted"]) == {"weekly_routines", "daily_schedule", "unplanned"}
    assert results["planted"]["daily_schedule"]["events"] > 0
    for name in results["plots"].values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["devices"] == 4 and report["over_cap"] == 0
    # every device's ledger lives in its own sealed vault and verifies with the public key alone
    import sqlite_utils

    from privacy.ledger import Ledger

    vaults = sorted((out / "vaults").glob("*.vault"))
    assert len(vaults) == 4
    for path in vaults:
        db = sqlite_utils.Database(path)
        try:
            records = Ledger(db).records(unit="user")
            # the habit scorer's DP-FedAvg run and its usefulness check (their own run ids) only: no LoRA round was charged
            assert records and all(r.details.get("run", "").endswith(("-habit-scorer", "-habit-check")) for r in records)
            assert sum(r.details["run"].endswith("-habit-check") for r in records) == 1
            assert Ledger(db).verify() == []
            assert db.execute("select value from meta where key = 'kdf_fast'").fetchone()[0] == "1"
        finally:
            db.close()
    assert "personalized" in stdout and "results.json" in stdout and "accuracy_per_round.png" in stdout


HAND_WRITTEN = """user,timestamp,event,place
ana,2026-03-02T07:00:00,wake,home
ana,2026-03-02T07:30:00,coffee,cafe
ana,2026-03-02T18:00:00,gym,gym
ana,2026-03-03T07:05:00,wake,home
ana,2026-03-03T07:35:00,coffee,cafe
ana,2026-03-03T12:30:00,lunch,office
ana,2026-03-04T07:00:00,wake,home
ana,2026-03-04T07:32:00,coffee,cafe
ana,2026-03-04T18:10:00,gym,gym
ana,2026-03-05T07:02:00,wake,home
ana,2026-03-05T07:31:00,coffee,cafe
ben,2026-03-02T09:00:00,wake,home
ben,2026-03-02T13:00:00,lunch,office
ben,2026-03-02T23:00:00,sleep,home
ben,2026-03-03T09:10:00,wake,home
ben,2026-03-03T13:05:00,lunch,office
ben,2026-03-03T23:10:00,sleep,home
ben,2026-03-04T09:05:00,wake,home
ben,2026-03-04T13:00:00,lunch,office
"""


def test_events_file_population_and_malformed_line(monkeypatch, capsys, tmp_path):
    good = tmp_path / "my-events.csv"
    good.write_text(HAND_WRITTEN)
    out = tmp_path / "sim"
    code, stdout, err = run_homebody(monkeypatch, capsys, "simulate", "--dataset", f"events:{good}", "--model", "tiny",
                             "--rounds", "1", "--mode", "local", "--predictor", "combined", "--out", str(out))
    assert code == 0, err
    results = load_results(out / "results.json")
    _check_schema(results)
    assert results["population"]["devices"] == 2 and results["population"]["events"] == 19
    assert results["config"]["epsilon_unit"] == "record" and results["final"]["bytes_up_per_device"] == 0
    assert 7.5 < results["final"]["epsilon_max"] <= 8.0  # one round spends the run's record-level target

    bad = tmp_path / "bad.csv"
    lines = HAND_WRITTEN.splitlines()
    lines[4] = "ana,yesterday-ish,coffee,cafe"  # line 5 of the file
    bad.write_text("\n".join(lines) + "\n")
    code, stdout, err = run_homebody(monkeypatch, capsys, "simulate", "--dataset", f"events:{bad}", "--model", "tiny",
                             "--out", str(tmp_path / "bad-out"))
    assert code == 1
    assert "line 5" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad-out" / "results.json").exists()


def test_evaluate_all_scores_every_device_after_sampled_rounds(tmp_path):
    """Two of five devices per round; --evaluate-all makes the last round score all five."""
    cfg = SimulationConfig(dataset="synthetic", synthetic_devices=5, devices=5, rounds=2, devices_per_round=2,
                           evaluate_all=True, model="tiny", max_events=40, predictor="combined", out=str(tmp_path))
    res = run_simulation(cfg)
    _check_schema(res)
    assert [r["sampled"] for r in res["rounds"]] == [2, 2]
    assert [r["devices_evaluated"] for r in res["rounds"]] == [2, 5]
    assert all(d["top1"] is not None for d in res["devices"])
    assert sum(d["rounds"] for d in res["devices"]) == 4  # only the cohorts trained and released
    # ...but every device's ledger is charged the whole run (2 rounds at q = 2/5), sampled or not
    eps = [d["epsilon"] for d in res["devices"]]
    assert 7.5 < min(eps) and max(eps) - min(eps) < 1e-6 and max(eps) <= 8.0
    assert res["final"]["epsilon_median"] == pytest.approx(res["final"]["epsilon_max"])


def test_ctrl_c_leaves_a_consistent_partial_result(monkeypatch, tmp_path):
    from simulations.engine_fast import FastEngine

    real_round = FastEngine.round

    def interrupted(self, r):
        if r == 2:
            raise KeyboardInterrupt
        return real_round(self, r)

    monkeypatch.setattr(FastEngine, "round", interrupted)
    cfg = SimulationConfig(dataset="synthetic", synthetic_devices=3, devices=3, rounds=3, model="tiny",
                           max_events=60, predictor="combined", out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg)
    results = load_results(tmp_path / "results.json")
    assert results["status"] == "interrupted"
    assert [r["round"] for r in results["rounds"]] == [1] and results["final"]["round"] == 1
    assert len(results["devices"]) == 3 and all(d["rounds"] == 1 for d in results["devices"])
    assert (tmp_path / "accuracy_per_round.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
@pytest.mark.parametrize("private", [False, True], ids=["non-private", "dp"])
def test_fast_and_flower_engines_agree(tmp_path, private):
    """Same devices, config and seeds through both engines. Each device draws its DP noise from
    the same seeded stream (seed, round, device index) in both, so with DP on as well the only
    differences left are the order of float sums and process boundaries: the metrics agree closely."""
    # The Flower engine trains the LoRA adapter only: compare that path (no habit scorer, its number).
    common = dict(dataset="synthetic", synthetic_devices=3, devices=3, rounds=2, model="tiny", max_events=40, seed=1,
                  habit_scorer=False, predictor="lora")
    common.update(dict(epsilon=8.0) if private else dict(non_private=True))
    fast = run_simulation(SimulationConfig(**common, engine="fast", out=str(tmp_path / "fast")))
    flower = run_simulation(SimulationConfig(**common, engine="flower", out=str(tmp_path / "flower")))
    for res in (fast, flower):
        _check_schema(res)
        assert [r["sampled"] for r in res["rounds"]] == [3, 3]
        assert res["final"]["bytes_up_per_device"] > 0
        if private:
            assert 7.0 < res["final"]["epsilon_max"] <= 8.0 and res["privacy"]["noise_multiplier"] > 0.5
        else:
            assert res["final"]["epsilon_max"] == float("inf")
    for key in ("top1", "top5", "global_top1"):
        for r_fast, r_flower in zip(fast["rounds"], flower["rounds"]):
            assert abs(r_fast[key] - r_flower[key]) <= 0.02, (key, r_fast[key], r_flower[key])
