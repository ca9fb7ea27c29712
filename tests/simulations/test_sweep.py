"""`homebody sweep`: every mode × ε runs once, resumes, and tabulates what results.json measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli_sweep import parse_epsilons
from simulations.runner import BadSimulationConfig, SimulationConfig, load_results
from simulations.sweep import SweepConfig, run_dir, run_sweep
from tests.cli_support import run_homebody

BASE = dict(dataset="synthetic", synthetic_devices=4, devices=3, rounds=1, model="tiny", max_events=60, predictor="combined")


def test_sweep_runs_every_configuration_resumes_and_tabulates(tmp_path: Path):
    cfg = SweepConfig(epsilons=(8.0,), modes=("local", "federated"), out=str(tmp_path / "sw"),
                      base=SimulationConfig(**BASE))
    log: list[str] = []
    table = run_sweep(cfg, log=log.append)

    runs = {(r["mode"], r["epsilon"]): r for r in table["runs"]}
    assert set(runs) == {("local", 8.0), ("local", None), ("federated", 8.0), ("federated", None)}
    for (mode, eps), row in runs.items():
        res = load_results(run_dir(tmp_path / "sw", mode, eps) / "results.json")
        assert res["status"] == "complete"
        assert res["config"]["mode"] == mode and res["config"]["non_private"] == (eps is None)
        assert row["top1"] == pytest.approx(res["final"]["top1"])
        assert row["unit"] == ("user" if mode == "federated" else "record")
        if eps is None:
            assert not row["private"]
        else:  # ε actually spent, per device, never above the target
            assert 0 < row["epsilon_spent_max"] <= eps + 1e-6
            assert row["epsilon_spent_median"] <= row["epsilon_spent_max"]
    # every baseline of results.json is a row, with its own numbers
    base = load_results(run_dir(tmp_path / "sw", "local", 8.0) / "results.json")["baselines"]
    assert {b["key"]: b["top1"] for b in table["baselines"]} == {
        k[:-5]: v for k, v in base.items() if k.endswith("_top1")}
    md = (tmp_path / "sw" / "table.md").read_text()
    assert "per-user Markov (baseline)" in md and "NON-PRIVATE" in md and "ε=8 user-level" in md
    assert json.loads((tmp_path / "sw" / "table.json").read_text())["runs"][0]["mode"] == "local"
    assert (tmp_path / "sw" / "accuracy_vs_epsilon.png").read_bytes()[:4] == b"\x89PNG"

    # a second sweep resumes: nothing is run again
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "sw").glob("*/results.json")}
    log.clear()
    run_sweep(cfg, log=log.append)
    assert sum("complete, skipped" in line for line in log) == 4
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_sweep_cli_takes_epsilons_as_separate_words(tmp_path: Path, monkeypatch, capsys):
    assert parse_epsilons("1", ["3", "8"]) == (1.0, 3.0, 8.0)
    assert parse_epsilons("1,3 8", []) == (1.0, 3.0, 8.0)
    code, out, _ = run_homebody(monkeypatch, capsys, "sweep", "--model", "tiny", "--devices", "2", "--rounds", "1",
                                "--max-events", "40", "--modes", "local", "--no-non-private",
                                "--epsilons", "2", "8", "--predictor", "lora", "--out", str(tmp_path / "cli"))
    assert code == 0, out
    table = json.loads((tmp_path / "cli" / "table.json").read_text())
    assert [r["epsilon"] for r in table["runs"]] == [2.0, 8.0]
    assert [r["predictor"] for r in table["runs"]] == ["lora", "lora"]  # --predictor reaches every run
    assert "| local only | ε=2 record-level" in out


@pytest.mark.parametrize("args, message", [
    (["--modes", "central"], "--modes takes local and/or federated"),
    (["--epsilons", "1", "lots"], "--epsilons takes numbers"),
    (["--epsilons", "-1"], "--epsilons must be positive"),
    (["--epsilons", "", "--no-non-private"], "nothing to run"),
])
def test_sweep_bad_settings_give_one_line(tmp_path: Path, monkeypatch, capsys, args, message):
    code, out, err = run_homebody(monkeypatch, capsys, "sweep", "--model", "tiny", "--out", str(tmp_path / "x"), *args)
    assert code == 1
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_sweep_config_validates_directly():
    with pytest.raises(BadSimulationConfig):
        SweepConfig(epsilons=(float("inf"),)).validate()


def test_sweep_names_what_a_habit_run_trained():
    from simulations.sweep import rounds_cell, run_name

    fed = {"mode": "federated", "predictor": "habit", "scorer_rounds": 60, "rounds": 5, "devices_per_round": None,
           "status": "complete"}
    assert run_name("federated", "habit") == "federated" and rounds_cell(fed) == "60 scorer rounds"
    assert rounds_cell({**fed, "mode": "local"}) == "– (nothing trained)"
    assert run_name("federated", "combined") == "federated + local" and run_name("local", "lora") == "local only"
    assert rounds_cell({**fed, "predictor": "lora", "devices_per_round": 10}) == "5 × 10 devices"
