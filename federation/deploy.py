"""Deployment on Flower's Deployment Engine: SuperLink, SuperNodes and `flwr run`, as processes.

Used by `homebody federate server | device | run` and by the deployment test. Every process is
started in its own session (process group) so that stopping it also stops the ClientApp /
ServerApp subprocesses Flower spawns; `Processes` stops everything it started, also on error.

Security: `insecure=True` (plain HTTP on 127.0.0.1) is for tests only. Otherwise pass the
SuperLink a certificate and key and the SuperNodes (and `flwr run`) the CA certificate.

Paths: every path handed to a Flower process must be absolute (the caller resolves it once,
see federation/cli.py): the processes run from the log folder, and Flower resolves some paths
again from there. A relative one is a DeploymentError here rather than a second, empty
FLWR_HOME under the logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping, Sequence

from privacy.errors import HomebodyError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTION = "homebody"
MARKER = "HOMEBODY_DEPLOYMENT_ID"


class DeploymentError(HomebodyError):
    """A Flower process could not be started or did not come up."""


@dataclass(frozen=True)
class Tls:
    """TLS material: the SuperLink needs cert+key, SuperNodes and `flwr run` need the CA cert."""

    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_absolute(path: Path | str, what: str) -> Path:
    """`path` unchanged if absolute; a relative path is a DeploymentError naming `what`."""
    if not Path(path).is_absolute():
        raise DeploymentError(f"{what} must be an absolute path (resolve it once, at the command), got {str(path)!r}")
    return Path(path)


def flower_bin(name: str) -> str:
    """Path of a Flower console script next to this interpreter (else on $PATH)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"{name} not found: install flwr in this environment")
    return found


def flower_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: FLWR_HOME/UV folders under `home`, telemetry off, this
    interpreter's bin folder first on PATH (the SuperLink spawns `flower-superexec` by name), and
    a marker variable by which `Processes` finds every process of this deployment. `home` must be absolute."""
    home = require_absolute(home, "the federation home")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env[MARKER] = uuid.uuid4().hex
    for var, sub in (("FLWR_HOME", "flwr"), ("UV_CACHE_DIR", "uv")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


def superlink_command(port: int, host: str = "127.0.0.1", tls: Tls | None = None, insecure: bool = False) -> list[str]:
    """`flower-superlink` on one HTTP port, never installing dependencies at run time."""
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    return cmd + _tls_server_args(tls, insecure)


def supernode_command(superlink: str, runtime_port: int, node_config: Mapping[str, str], tls: Tls | None = None,
                      insecure: bool = False) -> list[str]:
    """`flower-supernode` connected to `superlink` (host:port) with this device's node config
    (its `vault` must be an absolute path)."""
    if "vault" in node_config:
        require_absolute(node_config["vault"], "the node config's vault")
    if tls is not None:
        _check_tls_paths(tls)
    config = " ".join(f'{k}="{v}"' for k, v in node_config.items())
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(runtime_port), "--node-config", config]
    if insecure:
        return cmd + ["--insecure"]
    if tls is None:
        raise DeploymentError("a SuperNode needs the CA certificate (--root-certificates) or --insecure (tests only)")
    return cmd + ["--root-certificates", str(tls.ca_cert)]


def _check_tls_paths(tls: Tls) -> None:
    for what, path in (("the CA certificate", tls.ca_cert), ("the certificate", tls.cert), ("the private key", tls.key)):
        if path is not None:
            require_absolute(path, what)


def _tls_server_args(tls: Tls | None, insecure: bool) -> list[str]:
    if insecure:
        return ["--insecure"]
    if tls is None or tls.cert is None or tls.key is None:
        raise DeploymentError("the SuperLink needs --ssl-certfile and --ssl-keyfile, or --insecure (tests only)")
    _check_tls_paths(tls)
    return ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key), "--ssl-ca-certfile", str(tls.ca_cert)]


def write_connection(flwr_home: Path, address: str, tls: Tls | None = None, insecure: bool = False,
                     name: str = CONNECTION) -> None:
    """Write $FLWR_HOME/config.toml naming the SuperLink `flwr run . <name>` submits to."""
    require_absolute(flwr_home, "FLWR_HOME")
    if tls is not None and not insecure:
        _check_tls_paths(tls)
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append("insecure = true" if insecure else f'root-certificates = "{tls.ca_cert if tls else ""}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def run_command(app_dir: Path = REPO_ROOT, run_config: Mapping[str, object] | None = None, name: str = CONNECTION) -> list[str]:
    """`flwr run <app> <connection> --stream` with run-config overrides."""
    cmd = [flower_bin("flwr"), "run", str(app_dir), name, "--stream"]
    if run_config:
        cmd += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
    return cmd


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@dataclass
class Processes:
    """Flower processes started by us, each in its own session; `stop_all` ends every one of them."""

    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list[IO] = field(default_factory=list)
    _markers: set[str] = field(default_factory=set)

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str], stdout_pipe: bool = False) -> subprocess.Popen:
        """Start `cmd`; its output goes to <log_dir>/<name>.log (or a pipe when stdout_pipe)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if MARKER in env:
            self._markers.add(env[MARKER])
        if stdout_pipe:
            out = subprocess.PIPE
        else:
            out = open(self.log_dir / f"{name}.log", "wb")
            self._logs.append(out)
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(self.log_dir), text=stdout_pipe or None)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process group (the default SIGKILL simulates a device that vanishes)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM every group, wait up to `grace_s`, then SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group may hold children even if the leader exited
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Flower detaches some children into their own sessions (flower-superexec, app processes):
        # find them by the marker in their environment and end them too. Repeat until none is
        # left: a SIGKILLed process takes a moment to die, and one may have spawned another.
        kill_marked(MARKER, self._markers)
        for handle in self._logs:
            handle.close()

    def leftovers(self) -> list[int]:
        """Live processes carrying one of our deployment markers (Linux /proc; [] elsewhere)."""
        return marked_pids(MARKER, self._markers)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def kill_marked(name: str, values: set[str], timeout_s: float = 15.0) -> None:
    """SIGKILL every live process whose environment sets `name` to one of `values`, again until none is
    left or `timeout_s` passes (a killed process takes a moment to die, and one may have spawned another)."""
    deadline = time.time() + timeout_s
    while (pids := marked_pids(name, values)) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def marked_pids(var: str, values: set[str] | frozenset[str]) -> list[int]:
    """Live processes (not zombies, not this one) whose environment has `var` set to one of
    `values` (Linux /proc; [] elsewhere)."""
    found: list[int] = []
    proc_root = Path("/proc")
    if not values or not proc_root.is_dir():
        return found
    wanted = {f"{var}={v}".encode() for v in values}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and wanted.intersection(environ):
            found.append(int(entry.name))
    return found


def wait_for_port(host: str, port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on host:port (or the process dies)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DeploymentError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise DeploymentError(f"nothing listens on {host}:{port} after {timeout_s:g} s")
