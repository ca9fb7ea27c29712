"""Run the ServerApp and ClientApp in Flower's simulation runtime (Ray), one virtual SuperNode per device."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from federation.clientapp import AuditWriter, make_client_app
from federation.config import FederationConfig, FederationSetupError
from federation.history import FederationHistory
from federation.serverapp import ServerSetup, make_server_app
from federation.sources import PopulationSource, SimDevice, VaultPopulationSource, VaultRef
from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from federation.habit_serverapp import ScorerHistory
    from flwr.serverapp import ServerApp

LOG = logging.getLogger("homebody.federation.flower")


def run_simulation(
    population: Sequence[SimDevice],
    config: FederationConfig,
    labels: Sequence[str],
    *,
    ledger_dir: str | None = None,
    epsilon_cap: float | None = None,
    record_dir: str | None = None,
    audit_dir: str | None = None,
    num_cpus: int = 2,
    train_mods: Sequence[Callable] = (),
    ray_address: str | None = None,
) -> FederationHistory:
    """Run the ServerApp + ClientApp in Flower's simulation runtime (Ray), one virtual SuperNode
    per device, `config.rounds` rounds. With `ledger_dir` each device keeps a signed ledger there
    (user-level cap `epsilon_cap`, else privacy's default policy). Returns the history (per round: top1/top5 of the
    personalised adapters, global top1/top5, bytes up per device, user-level epsilon per device).
    `ray_address`: run on that existing Ray cluster instead of a private local Ray of `num_cpus` CPUs."""
    sink: list[FederationHistory] = []
    source = PopulationSource(list(population), ledger_dir, epsilon_cap=epsilon_cap)
    client = make_client_app(source, record_dir, AuditWriter(audit_dir) if audit_dir else None, train_mods)
    server = make_server_app(ServerSetup(config, list(labels)), sink)
    history = run_in_simulation(server, client, len(population), num_cpus, sink, ray_address)
    if history is None:
        raise FederationSetupError("the Flower simulation ended without a result (see the log above)")
    return history


def run_scorer_simulation(vaults: Sequence[VaultRef], config: FederationConfig, labels: Sequence[str], *,
                          record_dir: str | None = None, num_cpus: int = 2) -> "ScorerHistory":
    """The habit scorer's Flower run (`config.model` "habit-scorer") over real vaults, one virtual
    SuperNode each (`VaultPopulationSource`: seeded noise allowed, as in every simulation).
    Returns the server's ScorerHistory; each vault then holds the final weights and verdict."""
    if config.model != "habit-scorer":
        raise FederationSetupError(f"run_scorer_simulation runs model 'habit-scorer', the config says {config.model!r}")
    sink: list = []
    client = make_client_app(VaultPopulationSource(list(vaults)), record_dir)
    server = make_server_app(ServerSetup(config, list(labels)), sink)
    history = run_in_simulation(server, client, len(vaults), num_cpus, sink)
    if history is None:
        raise FederationSetupError("the Flower simulation ended without a result (see the log above)")
    return history


def run_in_simulation(server: "ServerApp", client: "ClientApp", devices: int, num_cpus: int, sink: list,
                      ray_address: str | None = None) -> Any:
    """Flower's simulation runtime (Ray): one virtual SuperNode per device, one CPU each, `num_cpus`
    in all, or on the existing Ray cluster at `ray_address` (Flower's backend passes its
    `init_args` to `ray.init`). Returns what the ServerApp put in `sink`, or None when it put nothing there."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    init = {"address": ray_address} if ray_address else {"num_cpus": num_cpus, "num_gpus": 0}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init}
    try:
        with _no_flower_debug_records():
            flwr_run_simulation(server_app=server, client_app=client, num_supernodes=devices, backend_config=backend)
    except HomebodyError:
        raise  # the ServerApp's own error (an unknown base...), re-raised by Flower: already one line for a user
    except Exception as exc:  # Flower re-raises the ServerApp's errors and wraps its runtime's crashes
        LOG.debug("the Flower simulation failed", exc_info=True)
        raise FederationSetupError(f"the Flower simulation failed: {_root_cause(exc)}") from exc
    return sink[0] if sink else None


@contextmanager
def _no_flower_debug_records() -> Iterator[None]:
    """While Flower runs, its DEBUG records are dropped (INFO and up still reach every handler).

    Flower's logger is at DEBUG and passes its records up to the root logger, where opacus installs
    a stderr handler on import (``logging.basicConfig``): without this filter every run printed
    Flower's DEBUG lines around the one-line result or error.
    """
    flower, only_info = logging.getLogger("flwr"), _AtLeast(logging.INFO)
    flower.addFilter(only_info)
    try:
        yield
    finally:
        flower.removeFilter(only_info)


class _AtLeast(logging.Filter):
    """Pass records at ``level`` or above."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a (chained) exception, as `Type: message` on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(f"{type(exc).__name__}: {exc}".split())
