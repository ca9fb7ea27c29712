"""Issue 18 item 1: federation failures are typed `HomebodyError`s, and a device's vault never stays open.

- `VaultSource.open` closes the vault it opened when reading the device's events fails (here: the
  node config names a profile the vault does not hold), so a SuperNode does not leak one open
  vault per failed round.
- A Flower simulation that fails inside Flower (here: the ServerApp cannot load a damaged model
  folder) ends `homebody simulate --engine flower` with one line on stderr and exit status 1
  (Flower's DEBUG records stay off stderr: they used to reach opacus' root handler).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "errors test passphrase"


def _open_fds_on(path: Path) -> list[str]:
    """This process's open file descriptors on `path` (or its -wal / -journal companions)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


def test_vault_source_closes_the_vault_when_reading_its_events_fails(tmp_path, monkeypatch):
    from flwr.app import Context, RecordDict

    from federation.sources import VaultSource
    from personal.errors import ProfileNotFound
    from personal.vault import Event, Vault, VaultConfig

    path = (tmp_path / "device.vault").resolve()
    with Vault.create(path, PASSPHRASE, VaultConfig(fast_kdf=True)) as vault:
        vault.add_events(Event("me", datetime(2024, 1, 1, 7) + timedelta(hours=i), "gym") for i in range(5))
    assert _open_fds_on(path) == []
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASSPHRASE)
    context = Context(run_id=1, node_id=7, node_config={"vault": str(path), "profile": "not-in-this-vault"},
                      state=RecordDict(), run_config={})
    with pytest.raises(ProfileNotFound) as raised:
        VaultSource().open(context)
    # `raised` keeps the failed call's frames (and so its locals) alive: only an explicit close frees the file.
    assert raised.value is not None
    assert _open_fds_on(path) == []


def _damaged_model_folder(folder: Path) -> Path:
    """A Hugging Face folder whose config is fine but whose weights file is garbage."""
    folder.mkdir()
    config = {"model_type": "bert", "vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 1, "intermediate_size": 16, "max_position_embeddings": 32}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\x07" * 64)
    return folder


@pytest.mark.slow
def test_a_failed_flower_simulation_prints_one_line_and_exits_1(flower_env):
    """Run as a shell would (a subprocess: opacus' root log handler writes to the real stderr, which
    capsys cannot see): exit 1, the error as the last line, no traceback, none of Flower's DEBUG lines."""
    model = _damaged_model_folder(flower_env / "damaged-model")
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", "--engine", "flower", "--model", str(model),
           "--dataset", "synthetic", "--synthetic-devices", "2", "--devices", "2", "--rounds", "1",
           "--predictor", "lora", "--out", str(flower_env / "out")]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=540)
    err = done.stderr
    assert done.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Flower simulation failed" in errors[0], err[-3000:]
    assert err.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in err and ":DEBUG:" not in err and "DEBUG " not in err, err[-3000:]
