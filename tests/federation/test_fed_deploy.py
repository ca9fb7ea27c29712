"""Acceptance 2: Deployment Engine on 127.0.0.1 — a SuperLink, 3 SuperNodes (one vault each),
`flwr run` for 3 rounds; one SuperNode is SIGKILLed during round 2. The run completes, the log
names the device that dropped (by the hash of its vault key: all three vaults hold profile `me`),
and every process the test started is gone afterwards.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from federation import deploy
from tests.federation.conftest import ACTIVITIES

pytestmark = [pytest.mark.slow, pytest.mark.network, pytest.mark.timeout(540)]
PASSPHRASE = "correct horse battery staple"


def _vaults(folder: Path) -> list[Path]:
    from datetime import datetime, timedelta

    from personal.vault import Event, Vault, VaultConfig

    paths = []
    for d in range(3):
        path = folder / f"dev-{d}.vault"
        with Vault.create(path, PASSPHRASE, VaultConfig(fast_kdf=True)) as vault:
            start = datetime(2024, 1, 1, 7)
            vault.add_events(Event("me", start + timedelta(hours=3 * i), ACTIVITIES[(i + d) % 5]) for i in range(30))
        paths.append(path)
    return paths


def _device_id(path: Path) -> str:
    from federation.device import device_identity
    from personal.vault import Vault

    with Vault.open(path, PASSPHRASE) as vault:
        return device_identity(vault.signing_key().public_key())


def _ledger(path: Path):
    from personal.vault import Vault
    from privacy.ledger import Ledger

    with Vault.open(path, PASSPHRASE) as vault:
        ledger = Ledger(vault.db, signer=vault.signing_key())  # profiles are keyed hashes: names need the key
        return ledger.records("me", "user"), ledger.verify(vault.public_key())


def test_superlink_and_three_supernodes_survive_a_killed_device(tmp_path):
    vaults = _vaults(tmp_path)
    ids = [_device_id(v) for v in vaults]
    assert len(set(ids)) == 3
    env = deploy.flower_env(tmp_path, {"HOMEBODY_PASSPHRASE": PASSPHRASE})
    port = deploy.free_port()
    lines: list[str] = []
    processes = deploy.Processes(tmp_path / "logs")
    try:
        link = processes.start("superlink", deploy.superlink_command(port, insecure=True), env)
        deploy.wait_for_port("127.0.0.1", port, proc=link)
        for d, vault in enumerate(vaults):
            node = {"vault": str(vault), "profile": "me"}
            processes.start(f"dev-{d}", deploy.supernode_command(f"127.0.0.1:{port}", deploy.free_port(), node, insecure=True), env)
        deploy.write_connection(Path(env["FLWR_HOME"]), f"127.0.0.1:{port}", insecure=True)
        run_config = {"rounds": 3, "labels": ",".join(ACTIVITIES), "fraction-evaluate": 0.0, "noise-multiplier": 2.0,
                      "min-available-devices": 2, "min-train-devices": 2, "round-timeout-s": 300.0, "straggler-grace": 0.5}
        run = processes.start("run", deploy.run_command(run_config=run_config), env, stdout_pipe=True)
        killed_at = None
        for line in run.stdout:
            lines.append(line)
            if killed_at is None and "[ROUND 2/3]" in line:
                time.sleep(1.0)  # let the round's train messages go out first
                processes.kill("dev-2")
                killed_at = len(lines)
        assert run.wait(timeout=60) == 0, "".join(lines[-40:])
    finally:
        processes.stop_all()
    log = "".join(lines)
    assert killed_at is not None, log[-3000:]
    assert re.search(rf"round 2: device {ids[2]} dropped out during train", log), log[-3000:]
    accepted = re.search(r"round 3: accepted \[('[0-9a-f]{16}'), ('[0-9a-f]{16}')\]", log)
    assert accepted and {accepted.group(1).strip("'"), accepted.group(2).strip("'")} == set(ids[:2]), log[-3000:]
    assert "Strategy execution finished" in log
    # every process we started, and every process Flower detached from them, is gone
    assert all(p.poll() is not None for p in processes.procs.values())
    assert processes.leftovers() == []
    # each device's signed ledger: dev-2 released once, the others three times, all verifiable
    for d, expected in ((0, 3), (1, 3), (2, 1)):
        records, problems = _ledger(vaults[d])
        assert len(records) == expected and problems == []
        assert all(r.unit == "user" and r.mechanism == "dp-fedavg-device-noise" for r in records)
