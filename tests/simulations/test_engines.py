"""Issue 16 items 2 and 4: one Engine protocol for both engines, and the fast engine's devices
sharded over worker processes with results that do not depend on how many."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from simulations.config import BadSimulationConfig, SimulationConfig
from simulations.runner import run_simulation

from tests.cli_support import run_homebody

REPO = Path(__file__).resolve().parents[2]


def _devices(tmp_path, n=3):
    from simulations import devices as simdev
    from simulations.populations import load_population, select_devices

    pop = select_devices(load_population("synthetic", synthetic_devices=n, seed=0), n)
    return simdev.prepare_devices(pop, tmp_path / "vaults", 3, 30), pop.labels()


def test_both_engines_implement_the_engine_protocol(tmp_path):
    from simulations.engine_fast import FastEngine
    from simulations.engine_flower import FlowerEngine
    from simulations.engines import Engine, make_engine

    devices, labels = _devices(tmp_path)
    for kind, cls in (("fast", FastEngine), ("flower", FlowerEngine)):
        cfg = SimulationConfig(dataset="synthetic", devices=3, rounds=1, model="tiny", engine=kind, workers=1,
                               predictor="lora", out=str(tmp_path / kind))
        engine = make_engine(cfg, devices, labels, tmp_path / kind)
        try:
            assert isinstance(engine, cls) and isinstance(engine, Engine)
            assert engine.devices_per_round == 3
            rows = engine.device_rows()
            assert [r["user"] for r in rows] == [d.user for d in devices] and all(r["rounds"] == 0 for r in rows)
        finally:
            engine.close()


def test_the_runner_knows_no_engine_by_name():
    tree = ast.parse((REPO / "simulations" / "runner.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "simulations.engines" in imported
    assert not imported & {"simulations.engine_fast", "simulations.engine_flower"}
    assert not any(isinstance(n, ast.Attribute) and n.attr == "engine" for n in ast.walk(tree)), "reads cfg.engine"
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & {"fast", "flower"}


def _comparable(res: dict) -> dict:
    """Everything a run reports that must not depend on the sharding (wall times and workers aside)."""
    rounds = [{k: v for k, v in r.items() if k != "wall_s"} for r in res["rounds"]]
    return {"rounds": rounds, "devices": res["devices"], "planted": res.get("planted"), "groups": res.get("groups"),
            "audit": res["audit"]["accountant"], "habit": {k: v for k, v in res["habit_scorer"].items() if k not in ("wall_s", "run")}}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["federated", "local"])
def test_one_worker_and_two_workers_give_identical_results(tmp_path, mode):
    """Same seed, 1 vs 2 worker processes: every round, device row and ledger epsilon is equal (to
    the last bit): each device's noise comes from its own seeded stream (seed, round, device), its
    features from the same encoding batches, and the server aggregates in cohort order."""
    common = dict(dataset="synthetic", synthetic_devices=5, devices=5, rounds=2, model="tiny", max_events=80, seed=2,
                  mode=mode, scorer_rounds=3, predictor="combined")
    if mode == "federated":
        common.update(devices_per_round=3, evaluate_all=True)
    one = run_simulation(SimulationConfig(**common, workers=1, out=str(tmp_path / "one")))
    two = run_simulation(SimulationConfig(**common, workers=2, out=str(tmp_path / "two")))
    assert one["timing"]["workers"] == 1 and two["timing"]["workers"] == 2
    assert min(two["timing"]["devices_per_worker"]) > 0  # both workers trained devices
    assert _comparable(one) == _comparable(two)
    assert all(d["rounds"] > 0 for d in two["devices"]) and 0 < two["final"]["epsilon_max"] <= 8.0
    assert not math.isnan(two["final"]["top1"])
    assert not list((tmp_path / "two" / ".feature-cache").rglob("*.pt"))  # the workers removed their spilled features


def test_workers_must_be_positive(monkeypatch, capsys, tmp_path):
    with pytest.raises(BadSimulationConfig, match="--workers must be at least 1"):
        SimulationConfig(workers=0).validate()
    code, _out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--workers", "0",
                                   "--out", str(tmp_path))
    assert code != 0 and "--workers must be at least 1" in err and "Traceback" not in err


def test_a_worker_answers_each_request_even_after_an_unread_one(tmp_path):
    """An interrupted round leaves a worker's answer unread; the next request must get its own answer."""
    from simulations.engine_fast import federation_config
    from simulations.shards import ShardSetup, ShardStats
    from simulations.workers import ShardPool

    devices, labels = _devices(tmp_path, 2)
    cfg = SimulationConfig(dataset="synthetic", devices=2, rounds=1, model="tiny")
    pool = ShardPool(ShardSetup(cfg, federation_config(cfg, 2, len(labels)), labels, str(tmp_path / "cache"), "run"), 2)
    try:
        assert pool.workers == 2
        pool.handles[0].submit("stats")  # never read, as when Ctrl-C stops the parent mid-round
        assert pool.first("ready") is True
        assert all(isinstance(s, ShardStats) for s in pool.broadcast("stats"))
        with pytest.raises(KeyError):  # a shard's error comes back to the caller as itself
            pool.first("personal_hits", "nobody", None)
    finally:
        pool.close()
    assert all(not h.proc.is_alive() for h in pool.handles)


@pytest.mark.parametrize("engine", ["fast", "flower"])
def test_an_unreachable_ray_address_is_one_line_and_fails_fast(monkeypatch, capsys, tmp_path, engine):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code, _out, err = run_homebody(monkeypatch, capsys, "simulate", "--model", "tiny", "--devices", "2",
                                   "--synthetic-devices", "2", "--rounds", "1", "--engine", engine, "--predictor", "lora",
                                   "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path))
    assert code != 0 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 60
