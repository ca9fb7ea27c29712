"""results.json writing (atomic, inf-safe, Ctrl-C consistent), config validation, and the plots."""

from __future__ import annotations

import math

import pytest

from privacy.errors import HomebodyError
from simulations.plots import write_plots
from simulations.runner import (
    BadSimulationConfig,
    RoundResult,
    SimulationConfig,
    load_results,
    new_results,
    run_loop,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _round(r: int, eps: float = 1.0) -> RoundResult:
    return RoundResult(round=r, top1=0.2 + 0.1 * r, top5=0.5 + 0.05 * r, global_top1=0.1 * r,
                       epsilon_max=eps * r, epsilon_median=eps * r * 0.8, bytes_up_per_device=1024.0, wall_s=0.5)


def _results(cfg: SimulationConfig) -> dict:
    base = {"most_frequent_top1": 0.15, "markov_top1": 0.3, "most_frequent_top5": 0.5, "markov_top5": 0.6}
    return new_results(cfg, {"name": "t", "devices": 3}, base)


def test_config_validation_is_one_typed_error():
    for bad in (dict(engine="warp"), dict(mode="both"), dict(rounds=0), dict(devices=0), dict(epsilon=-1.0),
                dict(delta=2.0), dict(devices_per_round=0), dict(cold_start_devices=-1)):
        with pytest.raises(BadSimulationConfig) as info:
            SimulationConfig(**bad).validate()
        assert isinstance(info.value, HomebodyError)
        assert "\n" not in str(info.value)
    SimulationConfig(non_private=True, epsilon=float("inf")).validate()  # non-private ignores epsilon


def test_config_names_its_epsilon_unit():
    assert SimulationConfig(mode="federated").to_json()["epsilon_unit"] == "user"
    local = SimulationConfig(mode="local").to_json()
    assert local["epsilon_unit"] == "record" and local["private"] is True
    np_cfg = SimulationConfig(non_private=True).to_json()
    assert np_cfg["private"] is False and np_cfg["epsilon"] is None


def test_loop_writes_every_round_and_survives_ctrl_c(tmp_path):
    cfg = SimulationConfig(rounds=5)
    results = _results(cfg)

    def step(r: int) -> RoundResult:
        if r == 3:
            raise KeyboardInterrupt
        return _round(r)

    with pytest.raises(KeyboardInterrupt):
        run_loop(results, cfg.rounds, step, tmp_path)
    back = load_results(tmp_path / "results.json")
    assert back["status"] == "interrupted"
    assert [r["round"] for r in back["rounds"]] == [1, 2]
    assert back["final"] == back["rounds"][-1]
    assert not (tmp_path / "results.json.tmp").exists()


def test_non_finite_epsilon_round_trips(tmp_path):
    cfg = SimulationConfig(rounds=2, non_private=True)
    results = run_loop(_results(cfg), 2, lambda r: _round(r, eps=math.inf), tmp_path)
    assert results["status"] == "complete"
    raw = (tmp_path / "results.json").read_text()
    assert "Infinity" not in raw  # strict JSON
    back = load_results(tmp_path / "results.json")
    assert math.isinf(back["final"]["epsilon_max"])


def test_plots_are_non_empty_pngs(tmp_path):
    cfg = SimulationConfig(rounds=3)
    results = run_loop(_results(cfg), 3, _round, tmp_path)
    results["devices"] = [{"user": f"d{i}", "epsilon": 1.0 + i / 10} for i in range(20)]
    results["sweep"] = {"personalized": [{"epsilon": 1.0, "top1": 0.3}, {"epsilon": 8.0, "top1": 0.5}]}
    names = write_plots(results, tmp_path)
    assert len(names) == 3
    for name in names.values():
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # a non-private run still gets readable plots
    results["devices"] = [{"user": "d", "epsilon": math.inf}]
    write_plots(results, tmp_path / "np")
    assert (tmp_path / "np" / names["epsilon_distribution"]).read_bytes().startswith(PNG_MAGIC)
