"""The ServerApp (Flower 1.42 message API): build the initial adapter, run `HomebodyStrategy`; with
run config `model = "habit-scorer"`, the habit scorer's run instead (`federation.habit_serverapp`).

`server_app` at module level is what `flwr run` loads (see [tool.flwr.app.components] in
pyproject.toml); it reads its settings from the run config ([tool.flwr.app.config]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.config import FederationConfig, FederationSetupError


@dataclass
class ServerSetup:
    """What the ServerApp needs besides Flower's grid: the config and the public label space."""

    config: FederationConfig
    labels: list[str]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "ServerSetup":
        labels = [s.strip() for s in str(run_config.get("labels", "")).split(",") if s.strip()]
        if not labels:
            raise FederationSetupError("run config `labels` (comma-separated public event vocabulary) is empty")
        return cls(FederationConfig.from_record(run_config), labels)


def make_server_app(setup: ServerSetup | None = None, sink: list | None = None):
    """The ServerApp. Without `setup` it reads the run config (`flwr run`); `sink` receives the history
    (a FederationHistory, or a habit_serverapp.ScorerHistory for model "habit-scorer")."""
    from flwr.serverapp import ServerApp

    from federation import device as dev
    from federation.strategy import HomebodyStrategy

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        chosen = setup or ServerSetup.from_run_config(dict(context.run_config))
        if chosen.config.model == "habit-scorer":  # the habit scorer's shared weights instead of the adapter
            from federation.habit_serverapp import run_scorer_flower

            result = run_scorer_flower(grid, chosen.config, chosen.labels)
            if sink is not None:
                sink.append(result)
            return
        base = dev.shared_base(chosen.config.base, chosen.config.lora_r)
        initial = dev.initial_adapter(base, chosen.labels, chosen.config)
        strategy = HomebodyStrategy(chosen.config, chosen.labels, base.weights_sha256, initial.tensors, chosen.config.seed)
        history = strategy.run(grid, chosen.config.rounds, chosen.config.round_timeout_s)
        if sink is not None:
            sink.append(history)

    return app


server_app = make_server_app()
