"""One source of truth per default (issue 18): the config dataclasses.

Every `homebody` option that sets a config dataclass field defaults to that field's default; the
SDK's `Assistant` and the local API's `POST /v1/personalize` build the same personalization as
`homebody personalize` without options; pyproject's `[tool.flwr.app.config]` (what `flwr run`
sends) carries `FederationConfig`'s defaults. Change a default in one place only and this fails.

Every option of a command listed in `CASES` is either mapped to a field or named in its
exemptions (options with no config field: where, who, output format), so a new option must be
classified here before the suite passes.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import tomllib
from pathlib import Path
from typing import Any, Callable

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, click.Command]:
    """Every leaf command of `homebody`, by its full name (`federate run`)."""
    from simulations.cli import app

    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), ())
    return out


def _options(cmd: click.Command) -> dict[str, Any]:
    """An option's name → its default (click's, so what a user gets without the flag)."""
    return {p.name: p.default for p in cmd.params if isinstance(p, click.Option)}


def _fields(*objs: Any) -> dict[str, Any]:
    """The dataclass instances' fields → values (later objects win on a shared name)."""
    out: dict[str, Any] = {}
    for obj in objs:
        out.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    return out


def _layers(text: str) -> tuple[int, ...] | None:
    return None if text == "all" else tuple(int(x) for x in text.split(","))


def _words(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(",", " ").split())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


Case = tuple[dict[str, Any], dict[str, tuple[str, Callable[[Any], Any] | None]], set[str]]
ALWAYS_EXEMPT = {"vault", "key_file"}  # where the vault is: no config field


def _cases() -> dict[str, Case]:
    """command → (the library's defaults by field, option → (field, CLI value → library value), exempt options)."""
    from federation.config import FederationConfig
    from personal.answers import AnswerConfig
    from personal.assistant import AssistantConfig
    from personal.server import DEFAULT_MAX_BODY
    from personal.slim.distil import DistilConfig
    from personal.slim.pipeline import SlimConfig
    from personal.slim.prune import PruneConfig
    from personal.training import DPConfig, TrainConfig
    from personal.vault import VaultConfig
    from privacy.accountant import DEFAULT_ACCOUNTANT
    from privacy.budget import DEFAULT_POLICY
    from simulations.cli_demo import DEMO_DEFAULTS
    from simulations.config import SimulationConfig
    from simulations.empirical_audit import EmpiricalAuditConfig
    from simulations.sweep import SweepConfig

    train, sim, prune = TrainConfig(), SimulationConfig(), PruneConfig()
    sweep = {k: v for k, v in _fields(SweepConfig()).items() if k != "base"}
    policy = {"delta": DEFAULT_POLICY.delta, "accountant": DEFAULT_ACCOUNTANT}
    return {
        "personalize": ({**_fields(DPConfig(), train, train.lora), "model": AssistantConfig.model},
                        {"rank": ("r", None), "layers": ("layers", _layers), "non_private": ("enabled", operator.not_)},
                        {"profile"}),
        "suggest": ({"model": AssistantConfig.model, "predictor": AssistantConfig.predictor}, {},
                    {"profile", "at", "top", "habits"}),
        "ask": ({**_fields(AnswerConfig()), "model": AssistantConfig().chat_name}, {}, {"profile", "save"}),
        "serve": ({**_fields(AssistantConfig()), "max_body_bytes": DEFAULT_MAX_BODY}, {},
                  {"host", "port", "profile", "threads"}),
        "slim": ({**_fields(SlimConfig(), DistilConfig()), "prune_mlp": prune.mlp, "prune_heads": prune.heads,
                  "prune_layers": prune.layers},
                 {"quantize": ("quantize", lambda v: None if v == "none" else v), "distil_steps": ("steps", None),
                  "prune": ("prune_mlp", None)},
                 {"model", "out", "calibration", "distil_from", "data", "heldout"}),
        "simulate": (_fields(sim), {"cold_start": ("cold_start_devices", None), "out": ("out", str)}, set()),
        "sweep": ({**_fields(sim), **sweep},
                  {"cold_start": ("cold_start_devices", None), "out": ("out", str), "epsilons": ("epsilons", _words),
                   "modes": ("modes", _names)}, set()),
        "demo": ({**DEMO_DEFAULTS, "threads": sim.threads}, {}, {"out", "skip_vault", "skip_simulation"}),
        "vault init": (_fields(VaultConfig()), {}, set()),
        "privacy epsilon": (policy, {}, {"noise_multiplier", "sample_rate", "steps", "as_json"}),
        "privacy noise": (policy, {}, {"epsilon", "sample_rate", "steps", "as_json"}),
        "privacy steps": (policy, {}, {"epsilon", "noise_multiplier", "sample_rate", "as_json"}),
        "privacy budget": (policy, {}, {"profile", "unit", "set_cap", "window_days", "window_cap", "as_json", "names"}),
        "privacy check": (policy, {}, {"profile", "unit", "noise_multiplier", "sample_rate", "steps"}),
        "audit report": (policy, {}, {"profile", "html_path", "json_path", "names"}),
        # None: "the form's default" (black-box or white-box), resolved inside the command
        "audit empirical": (_fields(EmpiricalAuditConfig()), {},
                            {"epsilon", "no_noise", "white_box", "canaries", "examples", "epochs", "batch_size",
                             "sample_rate", "json_path"}),
        # local_lr None: the model's own step size (FederationConfig.local_lr for lora, SCORER_LOCAL_LR for
        # habit-scorer), resolved inside the command (test_the_scorer_has_one_local_step_size below)
        "federate run": (_fields(FederationConfig()), {"min_devices": ("min_train_devices", None)},
                         {"superlink", "labels", "home", "insecure", "ca_cert", "local_lr"}),
    }


def _case_items() -> list[tuple[str, Case]]:
    return list(_cases().items())


@pytest.mark.parametrize("command", [k for k, _ in _case_items()])
def test_cli_option_defaults_are_the_dataclass_defaults(command: str) -> None:
    """Each mapped option's default, read as the library reads it, is the field's default."""
    library, aliases, exempt = dict(_case_items())[command]
    options = _options(_commands()[command])
    unclassified = set(options) - set(library) - set(aliases) - exempt - ALWAYS_EXEMPT
    assert not unclassified, f"`homebody {command}`: options neither mapped to a config field nor exempted: {unclassified}"
    checked = 0
    for name, default in options.items():
        if name in exempt or name in ALWAYS_EXEMPT:
            continue
        field, convert = aliases.get(name, (name, None))
        assert field in library, f"`homebody {command}`: alias {name} -> {field} names no field"
        value = convert(default) if convert and default is not None else default
        if isinstance(value, Path):
            value = str(value)
        assert value == library[field], (f"`homebody {command} --{name.replace('_', '-')}` defaults to {default!r}, "
                                         f"the library's {field} to {library[field]!r}")
        checked += 1
    assert checked, f"`homebody {command}`: no option compared"


def test_every_listed_command_exists() -> None:
    """The table names real commands (a renamed command must not silently drop out of the check)."""
    assert {k for k, _ in _case_items()} <= set(_commands())


def test_pyproject_flower_config_carries_federation_defaults() -> None:
    """`flwr run` sends pyproject's run config: every key is a FederationConfig field at its default."""
    from federation.config import FederationConfig

    with open(ROOT / "pyproject.toml", "rb") as fh:
        run_config = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    defaults = _fields(FederationConfig())
    for key, value in run_config.items():
        if key == "labels":  # the public vocabulary: a deployment's, not a FederationConfig field
            continue
        name = key.replace("-", "_")
        assert name in defaults, f"pyproject run config key {key!r} is no FederationConfig field"
        assert value == defaults[name], f"pyproject {key} = {value!r}, FederationConfig.{name} = {defaults[name]!r}"
    # Flower only accepts --run-config overrides of keys the app declares: every field a `flwr run`
    # deployment can use is declared (SecAgg+ runs on the legacy API, not through `flwr run`;
    # seed None has no TOML spelling).
    not_declared = {"secagg_min_devices", "secagg_num_shares", "secagg_threshold", "seed"}
    missing = set(defaults) - not_declared - {k.replace("-", "_") for k in run_config}
    assert not missing, f"FederationConfig fields missing from pyproject's [tool.flwr.app.config]: {missing}"
    assert FederationConfig.from_record(run_config) == FederationConfig()


def _cli_personalize_configs() -> tuple[Any, Any]:
    """What `homebody personalize --profile P` (no other option) trains with."""
    from personal.adapter import LoraSettings
    from personal.personalize import release_configs

    o = _options(_commands()["personalize"])
    lora = LoraSettings(r=o["rank"], alpha=2 * o["rank"], layers=_layers(o["layers"]))
    return release_configs(o["epsilon"], o["noise_multiplier"], o["non_private"], epochs=o["epochs"],
                           batch_size=o["batch_size"], lr=o["lr"], max_grad_norm=o["max_grad_norm"], lora=lora)


def test_sdk_and_api_personalize_like_the_cli() -> None:
    """The SDK's and the API's personalization without arguments is the CLI's, base model included."""
    from personal.assistant import Assistant
    from personal.personalize import release_configs
    from personal.server import PersonalizeIn

    cli = _cli_personalize_configs()
    sdk_params = inspect.signature(Assistant.personalize).parameters
    sdk = {k: p.default for k, p in sdk_params.items() if k in ("epsilon", "noise_multiplier", "non_private", "epochs",
                                                                 "batch_size", "lr", "max_grad_norm", "lora")}
    assert release_configs(**sdk) == cli
    body = PersonalizeIn()
    api = release_configs(None if body.non_private else body.epsilon, body.noise_multiplier, body.non_private,
                          epochs=body.epochs, batch_size=body.batch_size)
    assert api == cli
    train, dp = cli
    assert dp.enabled and dp.epsilon is not None  # a real DP release by default
    cli_model = _options(_commands()["personalize"])["model"]
    for method in (Assistant.open, Assistant.create):
        assert inspect.signature(method).parameters["model"].default == cli_model, method.__name__
    assert _options(_commands()["serve"])["model"] == cli_model
    assert _options(_commands()["suggest"])["model"] == cli_model


def test_simulation_and_federation_share_their_common_defaults() -> None:
    """Settings both configs carry (and the device round uses) agree where they mean the same thing."""
    from federation.config import FederationConfig
    from simulations.config import SimulationConfig

    fed, sim = FederationConfig(), SimulationConfig()
    for name in ("delta", "local_epochs", "personal_epochs", "batch_size", "history"):
        assert getattr(sim, name) == getattr(fed, name), name
    assert (sim.learning_rate, sim.update_clip, sim.lora_rank) == (fed.local_lr, fed.clip_norm, fed.lora_r)


def test_simulation_and_suggest_share_the_predictor_defaults() -> None:
    """`homebody simulate --predictor` measures what `homebody suggest` ranks with by default (issue 14 item 3):
    the simulation's predictor default, its combine weight and its choices are the device's constants."""
    import dataclasses as dc

    from personal.habits import COMBINE_WEIGHT, DEFAULT_PREDICTOR, PREDICTORS
    from simulations.config import SimulationConfig
    from simulations.habit_sim import PREDICTORS as SIM_PREDICTORS

    fields = {f.name: f.default for f in dc.fields(SimulationConfig)}
    assert SimulationConfig().predictor == fields["predictor"] == DEFAULT_PREDICTOR
    assert SimulationConfig().combine_weight == COMBINE_WEIGHT
    assert SIM_PREDICTORS is PREDICTORS


def test_the_scorer_has_one_local_step_size() -> None:
    """`federate run --model habit-scorer` and the simulations' scorer use the same step size
    (federation.config.SCORER_LOCAL_LR); LoRA keeps FederationConfig.local_lr; an explicit value wins."""
    from federation.cli import model_local_lr
    from federation.config import SCORER_LOCAL_LR, FederationConfig
    from simulations.config import SimulationConfig
    from simulations.habit_sim import scorer_plan

    assert model_local_lr("habit-scorer", None) == SCORER_LOCAL_LR != FederationConfig().local_lr
    assert model_local_lr("lora", None) == FederationConfig().local_lr
    assert model_local_lr("habit-scorer", 0.3) == 0.3
    assert scorer_plan(SimulationConfig(), 10, "r").config.local_lr == SCORER_LOCAL_LR
