"""Issue 16 item 3: a real two-node Ray cluster on 127.0.0.1 (a head and a second node, one CPU
each, started here), the fast engine's shards as Ray actors on it and the Flower engine's
simulation on it, with the results of a single-machine run with the same seed.

The cluster is stopped in a `finally` by the process groups this test started (and any process
still naming this test's private Ray temp dir), never with `ray stop`, which would stop every Ray
on the machine; a timer tears it down if the test runs past its hard limit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from simulations.config import SimulationConfig
from simulations.runner import run_simulation

HARD_LIMIT_S = 420
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every fixed-by-default port of a Ray node, taken free, so two nodes (and other Rays) never clash."""
    out = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"):
        out += [flag, str(_free_port())]
    return out


def _ours(temp_dir: str) -> list[int]:
    """Processes whose command line names our private temp dir (every Ray process of this cluster)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


class Cluster:
    """A head and a second Ray node on 127.0.0.1, each `ray start --block` in its own process group."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="hbray-", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=self.temp)

    def _start(self, args: list[str], log: str) -> None:
        out = open(Path(self.temp) / log, "wb")
        self.procs.append(subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                                            "--temp-dir", self.temp, *args, *_node_ports()],
                                           stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def start(self) -> None:
        self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port), "--include-dashboard=false",
                     "--ray-client-server-port", str(_free_port())], "head.log")
        self._wait_nodes(1)
        self._start(["--address", self.address, "--node-ip-address", "127.0.0.1"], "node.log")
        self._wait_nodes(2)

    def _wait_nodes(self, n: int, timeout: float = 180) -> None:
        code = ("import ray; ray.init(address=%r, log_to_driver=False); "
                "print(sum(1 for x in ray.nodes() if x['Alive'])); ray.shutdown()") % self.address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120)
            if res.returncode == 0 and res.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(2)
        logs = "".join(p.read_text(errors="replace")[-2000:] for p in Path(self.temp).glob("*.log"))
        raise AssertionError(f"the Ray cluster did not reach {n} node(s): {logs}")

    def stop(self) -> None:
        """Stop what this test started: its process groups, then anything left naming its temp dir."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (any(p.poll() is None for p in self.procs) or _ours(self.temp)):
                time.sleep(0.5)
            for pid in _ours(self.temp):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def _comparable(res: dict) -> dict:
    rounds = [{k: v for k, v in r.items() if k != "wall_s"} for r in res["rounds"]]
    return {"rounds": rounds, "devices": res["devices"], "planted": res.get("planted")}


@pytest.mark.slow
def test_a_two_node_ray_cluster_gives_the_single_machine_results(tmp_path):
    if not Path(RAY).exists():
        pytest.skip(f"no `ray` command next to {sys.executable} (flwr[simulation] installs it)")
    common = dict(dataset="synthetic", synthetic_devices=4, devices=4, rounds=2, model="tiny", max_events=100, seed=5,
                  habit_scorer=False, predictor="lora")
    local = run_simulation(SimulationConfig(**common, workers=1, out=str(tmp_path / "local")))
    flower_local = run_simulation(SimulationConfig(**common, engine="flower", workers=2, out=str(tmp_path / "flower-local")))
    cluster = Cluster()
    timer = threading.Timer(HARD_LIMIT_S, cluster.stop)  # hard limit: a hung cluster is torn down, the run fails
    timer.start()
    try:
        cluster.start()
        fast = run_simulation(SimulationConfig(**common, workers=2, ray_address=cluster.address, out=str(tmp_path / "ray")))
        flower = run_simulation(SimulationConfig(**common, engine="flower", ray_address=cluster.address,
                                                 out=str(tmp_path / "flower-ray")))
    finally:
        timer.cancel()
        cluster.stop()
    assert not _ours(cluster.temp)
    assert fast["timing"]["ray_address"] == cluster.address and fast["timing"]["workers"] == 2
    assert fast["timing"]["nodes"] == 2 and min(fast["timing"]["devices_per_worker"]) > 0  # one actor per node
    assert _comparable(fast) == _comparable(local)
    assert fast["status"] == flower["status"] == "complete" and flower["timing"]["ray_address"] == cluster.address
    # Flower averages the devices' metrics in the order their replies arrive: equal up to float rounding
    for r_ray, r_local in zip(flower["rounds"], flower_local["rounds"]):
        assert r_ray.keys() == r_local.keys()
        for key, value in r_ray.items():
            if key != "wall_s":
                assert value == (pytest.approx(r_local[key], rel=1e-9) if isinstance(value, float) else r_local[key]), key
    assert flower["devices"] == flower_local["devices"]
