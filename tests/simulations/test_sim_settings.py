"""Simulation settings that results.json records are the ones the run used (issue 18 item 3)."""

from __future__ import annotations

import sqlite3

import pytest

from simulations.config import BadSimulationConfig, SimulationConfig
from simulations.runner import run_simulation


def test_recorded_kdf_setting_is_the_vaults_own(tmp_path):
    cfg = SimulationConfig(dataset="synthetic", synthetic_devices=2, devices=2, rounds=1, model="tiny", mode="local",
                           max_events=30, fast_kdf=False, out=str(tmp_path / "run"))
    res = run_simulation(cfg)
    assert res["config"]["kdf"] == "default scrypt"
    vaults = sorted((tmp_path / "run" / "vaults").glob("*.vault"))
    assert len(vaults) == 2
    for path in vaults:
        with sqlite3.connect(path) as db:
            assert db.execute("select value from meta where key = 'kdf_fast'").fetchone()[0] == "0"


@pytest.mark.parametrize("kw, message", [
    (dict(engine="flower", mode="local"), "--engine flower runs federated rounds only"),
    (dict(engine="flower", evaluate_all=True), "--evaluate-all needs --engine fast"),
])
def test_engine_limits_are_config_errors(kw, message):
    with pytest.raises(BadSimulationConfig, match=message):
        SimulationConfig(**kw).validate()


def test_no_setting_is_recorded_but_ignored():
    assert "lora_layers" not in SimulationConfig().to_json()  # it was recorded, never read: removed
