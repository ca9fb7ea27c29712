"""Issue 13 item 7: the README's federation commands, exactly as written, across real processes.

The three commands are read from README.md's "Federation across real devices" block and run
unchanged but for two things a reader substitutes too: `HOMEBODY_PASSPHRASE=...` gets a real
passphrase, and `.venv/bin/homebody` is the repository's script (the commands are written to be
run from the repository folder; here each runs from its own temporary folder, so the default
relative `--home .homebody-federation` and `--vault my.vault` are relative to that folder).

Two devices, each in its own folder with a vault `my.vault` holding a profile named `me` (the
README's), must count as two devices in the server's population summary, known by the hash of
their vault keys; the profile name must not reach the server. On 127.0.0.1 only; every process
started (and every process Flower detached from them) is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from federation import deploy

pytestmark = [pytest.mark.slow, pytest.mark.network, pytest.mark.timeout(600)]
README = deploy.REPO_ROOT / "README.md"
SECTION = "## Federation across real devices"
PROFILE = "me"
LABELS = ["home", "work", "gym", "coffee", "park"]  # within the app's default public vocabulary (pyproject)
TEST_MARKER = "HOMEBODY_README_TEST"
RUN_TIMEOUT_S = 480


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's federation block, split into words (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's federation section has no bash block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def split_command(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value words (the environment) and the rest (the command)."""
    env, rest = {}, list(words)
    while rest and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", rest[0]):
        name, value = rest.pop(0).split("=", 1)
        env[name] = value
    return env, rest


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    """The value after `name` in a command's words."""
    return words[words.index(name) + 1] if name in words else default


def _homebody() -> list[str]:
    script = deploy.REPO_ROOT / ".venv" / "bin" / "homebody"
    return [str(script)] if script.exists() else [sys.executable, "-m", "simulations.cli"]


def _make_vault(path: Path, passphrase: str, shift: int) -> str:
    """A vault at `path` with 40 events of profile `me`; returns the device id the server should see."""
    from federation.device import device_identity
    from personal.vault import Event, Vault, VaultConfig

    start = datetime(2024, 1, 1, 7)
    with Vault.create(path, passphrase, VaultConfig(fast_kdf=True)) as vault:
        vault.add_events(Event(PROFILE, start + timedelta(hours=3 * i), LABELS[(i + shift) % len(LABELS)]) for i in range(40))
        return device_identity(vault.signing_key().public_key())


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _stop(procs: list[subprocess.Popen], marker: str) -> None:
    """Ctrl-C each command (it stops its Flower processes), then kill whatever still carries the marker."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.time() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deploy.kill_marked(TEST_MARKER, {marker})


def test_readme_commands_as_written_count_two_devices_with_one_profile_name(tmp_path):
    commands = [split_command(c) for c in readme_commands()]
    assert [cmd[:3] for _, cmd in commands] == [[".venv/bin/homebody", "federate", k] for k in ("server", "device", "run")], commands
    (server_env, server_cmd), (device_env, device_cmd), (run_env, run_cmd) = commands
    assert "--home" not in server_cmd + device_cmd + run_cmd, "the test is about the default relative --home"
    assert option(device_cmd, "--profile") == PROFILE and set(device_env) == {"HOMEBODY_PASSPHRASE"}
    port = int(option(server_cmd, "--port", "9092"))
    assert _port_free(port), f"127.0.0.1:{port} (the README's port) is in use: stop what listens there"
    rounds = int(option(run_cmd, "--rounds"))

    marker = uuid.uuid4().hex
    base_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(deploy.REPO_ROOT), os.environ.get("PYTHONPATH")])))
    base_env.update({TEST_MARKER: marker, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"})
    coordinator = tmp_path / "coordinator"
    coordinator.mkdir()
    devices: list[tuple[Path, str, str]] = []  # (folder, passphrase, expected device id)
    for d in range(2):
        folder = tmp_path / f"owner-{d}"
        folder.mkdir()
        passphrase = f"owner {d} passphrase {uuid.uuid4().hex[:8]}"
        devices.append((folder, passphrase, _make_vault(folder / option(device_cmd, "--vault"), passphrase, d)))
    assert devices[0][2] != devices[1][2]

    def start(cmd: list[str], cwd: Path, env: dict[str, str], log: str | None) -> subprocess.Popen:
        out = open(tmp_path / log, "w") if log else subprocess.PIPE
        return subprocess.Popen(_homebody() + cmd[1:], cwd=cwd, env={**base_env, **env}, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    procs: list[subprocess.Popen] = []
    lines: list[str] = []
    try:
        procs.append(start(server_cmd, coordinator, server_env, "server.log"))
        deploy.wait_for_port("127.0.0.1", port, timeout_s=120, proc=procs[0])
        for d, (folder, passphrase, _) in enumerate(devices):
            env = {**device_env, "HOMEBODY_PASSPHRASE": passphrase}
            procs.append(start(device_cmd, folder, env, f"device-{d}.log"))
        run = start(run_cmd, coordinator, run_env, None)
        procs.append(run)
        deadline = time.time() + RUN_TIMEOUT_S
        for line in run.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if time.time() > deadline:
                break
        code = run.wait(timeout=60)
    finally:
        _stop(procs, marker)
    log = "".join(lines)
    (tmp_path / "run.log").write_text(log)
    ours = [line for line in lines if "[homebody]" in line]
    assert "SuperLink connection" not in log and code == 0, log[-4000:]

    found = re.search(r"population summary \(user level\): (\{.*\})", log)
    assert found, log[-4000:]
    summary = json.loads(found.group(1))
    ids = {device_id for _, _, device_id in devices}
    assert set(summary["participations"]) == ids and summary["devices_seen"] == 2, "".join(ours)
    assert summary["rounds"] == rounds and all(n >= 1 for n in summary["participations"].values()), "".join(ours)
    # Every round, each device either took part or declined (its user-level budget): by its own id.
    for device_id in ids:
        acted = [line for line in ours if re.search(rf"round \d+: (accepted|declined).*'{device_id}'", line)]
        assert len(acted) == rounds, "".join(ours)
    # The profile name is not how the server names anyone (it must not reach the server at all).
    assert ours and not any(re.search(rf"['\" ]{PROFILE}['\" ,\]]", line) for line in ours), "".join(ours)

    # One Flower home per command folder, resolved once: no second config under the logs.
    for folder in [coordinator] + [d[0] for d in devices]:
        home = folder / ".homebody-federation"
        assert (home / "logs").is_dir() and not (home / "logs" / ".homebody-federation").exists()
    assert (coordinator / ".homebody-federation" / "flwr" / "config.toml").is_file()

    # Each device's own signed ledger holds its rounds, and verifies.
    from personal.vault import Vault
    from privacy.ledger import Ledger

    for folder, passphrase, device_id in devices:
        with Vault.open(folder / option(device_cmd, "--vault"), passphrase) as vault:
            ledger = Ledger(vault.db, signer=vault.signing_key())
            released = len(ledger.records(PROFILE, "user"))
            assert released == summary["participations"][device_id] and ledger.verify(vault.public_key()) == []

    assert all(p.poll() is not None for p in procs)
    assert deploy.marked_pids(TEST_MARKER, {marker}) == []
