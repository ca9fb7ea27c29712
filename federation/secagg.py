"""Mode (b): device-side noise shares + SecAgg+, so the server sees only the sum.

Flower's SecAgg+ (`secaggplus_mod` on the ClientApp, `SecAggPlusWorkflow` on the ServerApp)
only runs on Flower's legacy API (`LegacyContext`, `DefaultWorkflow`, `NumPyClient`), so this
mode has its own pair of apps. The device round is the same `federation.device.train_round`;
with `mode="secagg"` each device adds noise sigma*C/sqrt(m) (m = `secagg_min_devices`), and
the sum of at least m updates carries sigma*C, which is what each device's ledger records.

The server cannot screen single updates (it never sees one): devices run `check_update`
before masking, and the server checks the unmasked mean (finite, norm within the bound a
mean of honest updates respects) before applying it. `num_shares` must be odd (Flower crashes
every client on an even count).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from federation.config import FederationConfig, FederationConfigError
from federation.logs import flower_log as _log
from federation.serverapp import ServerSetup
from federation.simulation import run_in_simulation
from federation.sources import DeviceSource, PopulationSource, SimDevice, run_name
from federation.update import Arrays, Update, UpdateHeader, UpdateRejected, check_update, spec_of


@dataclass
class SecAggRound:
    """What the server learned in one SecAgg+ round: how many devices were summed, and whether
    the aggregate passed the check."""

    round: int
    summed: int
    failures: int
    applied: bool
    reason: str = ""


@dataclass
class SecAggHistory:
    rounds: list[SecAggRound] = field(default_factory=list)
    arrays: Arrays = field(default_factory=dict)
    initial_arrays: Arrays = field(default_factory=dict)


def _check_mode(config: FederationConfig) -> None:
    if config.mode != "secagg":
        raise FederationConfigError(f"the SecAgg+ apps need mode='secagg', got {config.mode!r}")
    if config.secagg_threshold > config.secagg_num_shares:
        raise FederationConfigError("secagg_threshold cannot exceed secagg_num_shares")


def clipping_range(spec: dict[str, tuple[int, ...]], config: FederationConfig) -> float:
    """SecAgg+ quantizes values in [-r, r]: r = the largest coordinate an honest noised update has."""
    d = sum(int(np.prod(s)) for s in spec.values())
    return float(config.clip_norm * (1.0 + config.device_sigma * (np.sqrt(2.0 * np.log(2.0 * max(d, 1))) + 6.0)))


def make_secagg_client_app(source: DeviceSource):
    """Legacy ClientApp: a NumPyClient whose fit is `train_round`, wrapped by `secaggplus_mod`."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    from federation import device as dev

    class SecAggDevice(NumPyClient):
        def __init__(self, context: Any) -> None:
            self.context = context

        def fit(self, parameters, config):
            cfg = FederationConfig.from_record(config)
            base = dev.shared_base(cfg.base, cfg.lora_r)
            names, labels = str(config["names"]).split(","), str(config["labels"]).split(",")
            adapter = dev.adapter_from_arrays(base, dict(zip(names, parameters)), labels, cfg)
            handle = source.open(self.context)
            rnd = int(config["server-round"])
            try:
                rng = handle.noise_rng(cfg.seed, rnd, self.context)
                ctx = dev.DeviceRound(handle.device_id, rnd, float(config["sample-rate"]), handle.gate, handle.profile, rng,
                                      seed=(cfg.seed or 0) + rnd, run=run_name(self.context))
                result = dev.train_round(base, adapter, handle.train, cfg, ctx)
            finally:
                handle.close()
            # Each device weighs 1: SecAgg+ then yields the plain mean of the noised deltas.
            return [result.update.arrays[n] for n in names], 1, {"epsilon": result.epsilon or -1.0}

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    return ClientApp(client_fn=lambda context: SecAggDevice(context).to_client(), mods=[secaggplus_mod])


def make_secagg_server_app(setup: ServerSetup, sink: list | None = None):
    """Legacy ServerApp: FedAvg of deltas through `SecAggPlusWorkflow`."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from federation import device as dev

    cfg, labels = setup.config, list(setup.labels)
    _check_mode(cfg)
    app = ServerApp()

    class SecAggFedAvg(FedAvg):
        """Receives only the unmasked mean of the deltas; checks it, then global += server_lr * mean."""

        def __init__(self, initial: Arrays) -> None:
            self.names = sorted(initial)
            self.spec = spec_of(initial)
            self.current = {k: np.asarray(v, np.float32) for k, v in initial.items()}
            self.history = SecAggHistory(initial_arrays=dict(self.current))
            k = max(cfg.min_train_devices, cfg.secagg_min_devices)
            super().__init__(fraction_fit=cfg.fraction_train, fraction_evaluate=0.0, min_fit_clients=k,
                             min_evaluate_clients=0, min_available_clients=max(k, cfg.min_available_devices),
                             initial_parameters=ndarrays_to_parameters([self.current[n] for n in self.names]),
                             on_fit_config_fn=self.fit_config)

        def fit_config(self, server_round: int) -> dict[str, Any]:
            return cfg.to_record() | {"labels": ",".join(labels), "names": ",".join(self.names),
                                      "server-round": server_round, "sample-rate": cfg.fraction_train}

        def aggregate_fit(self, server_round, results, failures):
            mean, _ = super().aggregate_fit(server_round, results, failures)
            record = SecAggRound(server_round, len(results), len(failures), False)
            if mean is not None:
                arrays = dict(zip(self.names, parameters_to_ndarrays(mean)))
                try:
                    check_update(Update(UpdateHeader(server_round, "secagg-mean", cfg.clip_norm, cfg.device_sigma), arrays),
                                 self.spec, cfg.clip_norm, sigma=cfg.device_sigma)
                    self.current = {n: (self.current[n] + cfg.server_lr * arrays[n]).astype(np.float32) for n in self.names}
                    record.applied = True
                except UpdateRejected as exc:
                    record.reason = f"{exc.reason}: {exc.detail}"
                    _log(logging.WARNING, "round %d: SecAgg+ aggregate rejected (%s)", server_round, record.reason)
            self.history.rounds.append(record)
            _log(logging.INFO, "round %d: SecAgg+ sum of %d devices (%d failures), applied=%s", server_round,
                 record.summed, record.failures, record.applied)
            return ndarrays_to_parameters([self.current[n] for n in self.names]), {}

    @app.main()
    def main(grid, context) -> None:
        base = dev.shared_base(cfg.base, cfg.lora_r)
        strategy = SecAggFedAvg(dev.initial_adapter(base, labels, cfg).tensors)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=cfg.secagg_num_shares, reconstruction_threshold=cfg.secagg_threshold,
            clipping_range=clipping_range(strategy.spec, cfg)))
        workflow(grid, legacy)
        strategy.history.arrays = dict(strategy.current)
        if sink is not None:
            sink.append(strategy.history)

    return app


def run_secagg_simulation(population: Sequence[SimDevice], config: FederationConfig, labels: Sequence[str], *,
                          ledger_dir: str | None = None, epsilon_cap: float | None = None, num_cpus: int = 2) -> SecAggHistory:
    """Mode (b) in Flower's simulation runtime: one virtual SuperNode per device."""
    _check_mode(config)
    sink: list[SecAggHistory] = []
    client = make_secagg_client_app(PopulationSource(list(population), ledger_dir, epsilon_cap=epsilon_cap))
    server = make_secagg_server_app(ServerSetup(config, list(labels)), sink)
    history = run_in_simulation(server, client, len(population), num_cpus, sink)
    if history is None:
        raise FederationConfigError("the SecAgg+ simulation ended without a result (see the log above)")
    return history
