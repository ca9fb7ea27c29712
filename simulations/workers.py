"""Where the fast engine's shards run: in this process, in worker processes, or as Ray actors.

`ShardPool` places each device on one shard for the whole run (the shard with the least training
work so far, group by group, so that the placement, like everything else, is the same for any
number of workers), then runs a shard method for many devices at once: every shard gets its own
devices' share, all shards work in parallel, and the results come back in the caller's order.

- 1 worker: the shard lives in this process (no copies, no start-up);
- N workers: N spawned processes (one torch thread each, unless --threads says otherwise), each
  loading the shared base once; they start loading while the parent sets up the run;
- `ray_address`: N Ray actors on an existing cluster (the devices' vaults and the output folder
  must be on a filesystem every node sees: a shared mount, or one machine).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from privacy.errors import HomebodyError
from simulations.devices import FeatureCache, SimDevice
from simulations.shards import DeviceShard, ShardSetup


class WorkerFailed(HomebodyError):
    """A simulation worker (process or Ray actor) stopped or failed."""


MIN_DEVICES_PER_WORKER = 4  # by default each worker (~5-15 s to start on 2 cores) gets at least this many devices


def default_workers(ray_address: str | None = None, devices: int | None = None) -> int:
    """The cores of this machine, or the CPUs of the Ray cluster at `ray_address`; for `devices`
    devices, no more than one worker per MIN_DEVICES_PER_WORKER of them (a tiny run stays in-process)."""
    if ray_address:
        import ray

        cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    else:  # the cores this process may run on (a container or taskset may allow fewer than the machine has)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if devices is None else max(1, min(cores, devices // MIN_DEVICES_PER_WORKER))


class _Inline:
    """A shard in this process."""

    def __init__(self, setup: ShardSetup, cache: FeatureCache | None) -> None:
        self.shard = DeviceShard(setup, cache)

    def submit(self, method: str, *args) -> Callable[[], object]:
        value = getattr(self.shard, method)(*args)
        return lambda: value

    def close(self) -> None:
        self.shard.close()


def _serve(conn, setup: ShardSetup) -> None:
    """A worker process: build the shard, then answer (method, args) requests until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    shard = DeviceShard(setup)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        method, args = request
        try:
            conn.send(("ok", getattr(shard, method)(*args)))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, typed there
            conn.send(("error", _portable(exc)))
    shard.close()
    conn.close()


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling both ways, else a WorkerFailed naming it (one line either way)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return WorkerFailed(f"{type(exc).__name__}: {exc}")


class _Process:
    """A shard in a spawned worker process."""

    def __init__(self, ctx, setup: ShardSetup) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, setup), daemon=True)
        self.proc.start()
        child.close()
        self.pending = False  # a request whose answer was never read (the parent was interrupted)

    def submit(self, method: str, *args) -> Callable[[], object]:
        if self.pending:  # drop the stale answer first, so this request gets its own
            self._receive(raise_errors=False)
        self.conn.send((method, args))
        self.pending = True
        return self._receive

    def _receive(self, raise_errors: bool = True) -> object:
        try:
            kind, value = self.conn.recv()
            self.pending = False
        except EOFError:
            raise WorkerFailed(f"a simulation worker exited (code {self.proc.exitcode})") from None
        if kind == "error" and raise_errors:
            raise value
        return value

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()


class _RayActor:
    """A shard as a Ray actor on an existing cluster."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def submit(self, method: str, *args) -> Callable[[], object]:
        import ray

        ref = getattr(self.actor, method).remote(*args)
        return lambda: ray.get(ref)

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.close.remote())
        finally:
            ray.kill(self.actor)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast (WorkerFailed, one line) when HOST:PORT does not accept connections: `ray.init`
    would otherwise retry for minutes. "auto" (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WorkerFailed(f"--ray-address must be HOST:PORT or 'auto' (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WorkerFailed(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def connect_ray(address: str) -> bool:
    """Join the Ray cluster at `address` (workers see this process's sys.path, as Flower's do).
    Returns True when this call connected (so the caller disconnects at the end)."""
    import ray

    if ray.is_initialized():
        return False
    check_ray_address(address)
    try:
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
                 log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, ValueError, RuntimeError...
        raise WorkerFailed(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {exc}") from exc
    return True


def _context():
    """forkserver (POSIX), its server preloading torch and the shard code once, so each worker forks
    from a process that has imported them (never from this one, whose threads fork must not copy);
    spawn elsewhere. Either way a script that runs a simulation needs `if __name__ == "__main__":`."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "simulations.shards", "personal.training"])
    return ctx


class ShardPool:
    """The fast engine's shards and which device lives on which."""

    def __init__(self, setup: ShardSetup, workers: int | None, ray_address: str | None = None,
                 cache: FeatureCache | None = None, most: int | None = None) -> None:
        """`workers` shards (None: `default_workers` for `most` devices), at most one per device."""
        self.ray_owned = connect_ray(ray_address) if ray_address else False
        workers = max(1, min(workers or default_workers(ray_address, most), most or 1 << 30))
        self.workers = workers
        if ray_address:
            self.handles = self._ray_handles(setup, workers)
        elif workers == 1:
            self.handles = [_Inline(setup, cache)]
        else:
            ctx = _context()
            self.handles = [_Process(ctx, self._own_cache(setup, i)) for i in range(workers)]
        self.owner: dict[str, int] = {}
        self.load = [0] * len(self.handles)

    @staticmethod
    def _own_cache(setup: ShardSetup, i: int) -> ShardSetup:
        return replace(setup, cache_dir=str(Path(setup.cache_dir) / f"shard-{i}"))

    def _ray_handles(self, setup: ShardSetup, workers: int) -> list[_RayActor]:
        import ray

        actor = ray.remote(num_cpus=1, max_restarts=0)(DeviceShard)
        return [_RayActor(actor.remote(self._own_cache(setup, i))) for i in range(workers)]

    def place(self, groups: Sequence[Sequence[SimDevice]]) -> dict[int, list[list[str]]]:
        """Give each group of new devices to the shard with the least training work so far; returns
        per shard the groups it now owns (in order), for it to encode."""
        new: dict[int, list[list[SimDevice]]] = {}
        for group in groups:
            group = [d for d in group if d.user not in self.owner]
            if not group:
                continue
            i = min(range(len(self.handles)), key=lambda k: (self.load[k], k))
            for d in group:
                self.owner[d.user] = i
                self.load[i] += max(1, len(d.train))
            new.setdefault(i, []).append(group)
        waits = [self.handles[i].submit("add", [d for g in gs for d in g]) for i, gs in new.items()]
        for wait in waits:
            wait()
        return {i: [[d.user for d in g] for g in gs] for i, gs in new.items()}

    def encode(self, placed: dict[int, list[list[str]]]) -> None:
        """Each shard encodes the groups it was just given (all shards in parallel)."""
        waits = [self.handles[i].submit("encode", groups) for i, groups in placed.items()]
        for wait in waits:
            wait()

    def broadcast(self, method: str, *args) -> list:
        """Call `method(*args)` on every shard; their answers in shard order."""
        waits = [h.submit(method, *args) for h in self.handles]
        return [wait() for wait in waits]

    def run(self, method: str, users: Sequence[str], *args, streams: Sequence[int] | None = None,
            tick: Callable[[int], None] | None = None) -> list:
        """`method(users_of_shard, *args[, streams])` on every shard that owns some of `users`, in
        parallel; the per-device results back in the order of `users`."""
        by_shard: dict[int, list[int]] = {}
        for pos, user in enumerate(users):
            by_shard.setdefault(self.owner[user], []).append(pos)
        waits = []
        for i, positions in by_shard.items():
            extra = (list(streams[p] for p in positions),) if streams is not None else ()
            waits.append((positions, self.handles[i].submit(method, [users[p] for p in positions], *args, *extra)))
        out: list = [None] * len(users)
        for positions, wait in waits:
            for p, value in zip(positions, wait()):
                out[p] = value
            if tick:
                tick(len(positions))
        return out

    def first(self, method: str, *args):
        """`method(*args)` on the first shard (work any shard can do)."""
        return self.handles[0].submit(method, *args)()

    def call(self, user: str, method: str, *args):
        """`method(user, *args)` on the shard that owns `user`."""
        return self.handles[self.owner[user]].submit(method, user, *args)()

    def close(self) -> None:
        """Stop the workers (each removes its spilled feature files); leave the Ray cluster if we joined it."""
        try:
            for h in self.handles:
                h.close()
        finally:
            if self.ray_owned:
                import ray

                ray.shutdown()
