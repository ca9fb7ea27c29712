"""`homebody federate server | device | run`: Flower's Deployment Engine, from the command line.

- `server` runs a SuperLink (the coordinator) and writes the connection `run` uses.
- `device --vault V --profile P` runs a SuperNode for one device; its ClientApp reads the vault
  (passphrase from $HOMEBODY_PASSPHRASE or a prompt) and sends only clipped, noised updates.
- `run` submits the homebody app (`federation.serverapp` + `federation.clientapp`) to the SuperLink for R rounds.

TLS is the default; `--insecure` (plain HTTP) is for tests on 127.0.0.1 only.

Every path option (`--home`, `--vault`, TLS files) is made absolute here, once, before any
process starts: Flower's processes run from the log folder, where a relative path means
something else. A device is known to the server by `federation.device.device_identity` of its
vault key (printed by `device`); its profile name stays on the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from federation.config import SCORER_LOCAL_LR as SCORER_LR, FederationConfig
from privacy.errors import HomebodyError

federate_app = typer.Typer(help="Federated learning across devices through Flower (server, device, run).", no_args_is_help=True)
HOME_HELP = "Folder for Flower's state (FLWR_HOME, caches) and process logs."
_FED = FederationConfig()  # `run`'s options default to the dataclass's defaults (tests/test_defaults.py)


class FederateCliError(HomebodyError):
    """Bad options for a federation command."""


def register(app: typer.Typer) -> None:
    """Add the `federate` group to the root CLI."""
    app.add_typer(federate_app, name="federate")


def _absolute(path: Path) -> Path:
    """`path` with ~ expanded, made absolute against this command's working folder."""
    return path.expanduser().resolve()


def _tls(insecure: bool, ca: Optional[Path], cert: Optional[Path] = None, key: Optional[Path] = None):
    from federation.deploy import Tls

    ca, cert, key = (None if p is None else _absolute(p) for p in (ca, cert, key))
    if insecure:
        typer.echo("warning: --insecure sends everything in clear; use it only for tests on 127.0.0.1", err=True)
        return None
    if ca is None:
        raise FederateCliError("give --ca-cert (and for the server --cert/--key), or --insecure for a local test")
    for path in (ca, cert, key):
        if path is not None and not path.is_file():
            raise FederateCliError(f"TLS file not found: {path}")
    return Tls(ca_cert=ca, cert=cert, key=key)


def _foreground(name: str, cmd: list[str], env: dict[str, str], home: Path) -> None:
    """Run one Flower process until it exits or Ctrl-C; stop it (and its children) either way."""
    from federation.deploy import Processes

    processes = Processes(home / "logs")
    try:
        proc = processes.start(name, cmd, env, stdout_pipe=True)
        for line in proc.stdout:  # type: ignore[union-attr]
            typer.echo(line.rstrip())
        code = proc.wait()
    except KeyboardInterrupt:
        code = 130
    finally:
        processes.stop_all()
    if code not in (0, 130):
        raise FederateCliError(f"{name} exited with code {code} (log above)")


@federate_app.command("server")
def server(
    port: int = typer.Option(9092, help="The SuperLink's HTTP port (Fleet, Control and Runtime APIs)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    home: Path = typer.Option(Path(".homebody-federation"), help=HOME_HELP),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP: tests on 127.0.0.1 only."),
    ca_cert: Optional[Path] = typer.Option(None, help="CA certificate (PEM)."),
    cert: Optional[Path] = typer.Option(None, help="Server certificate (PEM)."),
    key: Optional[Path] = typer.Option(None, help="Server private key (PEM)."),
) -> None:
    """Run the SuperLink (Ctrl-C stops it) and record its address for `homebody federate run`."""
    from federation import deploy

    tls = _tls(insecure, ca_cert, cert, key)
    home = _absolute(home)
    env = deploy.flower_env(home)
    deploy.write_connection(Path(env["FLWR_HOME"]), f"{host}:{port}", tls, insecure)
    typer.echo(f"SuperLink on {host}:{port}; devices: homebody federate device --superlink {host}:{port} ...", err=True)
    _foreground("superlink", deploy.superlink_command(port, host, tls, insecure), env, home)


@federate_app.command("device")
def device(
    vault: Path = typer.Option(..., help="The device's vault file."),
    profile: str = typer.Option(..., help="Profile in the vault whose events this device learns from."),
    superlink: str = typer.Option("127.0.0.1:9092", help="SuperLink address host:port."),
    home: Path = typer.Option(Path(".homebody-federation"), help=HOME_HELP),
    runtime_port: int = typer.Option(0, help="Local port of the SuperNode's runtime API (0: pick a free one)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP: tests on 127.0.0.1 only."),
    ca_cert: Optional[Path] = typer.Option(None, help="CA certificate (PEM) that signed the SuperLink's certificate."),
) -> None:
    """Run a SuperNode for one device (Ctrl-C stops it). Only clipped, noised adapter updates leave.

    The server knows the device by the hash of its vault's public key (printed here), never by
    the profile name, which does not leave the device.
    """
    from federation import deploy
    from federation.device import device_identity
    from personal.vault import Vault

    tls = _tls(insecure, ca_cert)
    vault, home = _absolute(vault), _absolute(home)
    if not vault.is_file():
        raise FederateCliError(f"vault not found: {vault}")
    passphrase = os.environ.get("HOMEBODY_PASSPHRASE") or typer.prompt("vault passphrase", hide_input=True)
    with Vault.open(vault, passphrase) as opened:  # fail here, clearly, rather than inside Flower
        if profile not in opened.profiles():
            raise FederateCliError(f"profile {profile!r} not in {vault} (profiles: {', '.join(opened.profiles()) or 'none'})")
        device_id = device_identity(opened.signing_key().public_key())
    env = deploy.flower_env(home, {"HOMEBODY_PASSPHRASE": passphrase})
    node = {"vault": str(vault), "profile": profile}
    cmd = deploy.supernode_command(superlink, runtime_port or deploy.free_port(), node, tls, insecure)
    typer.echo(f"device id (what the server sees): {device_id}", err=True)
    _foreground(f"supernode-{device_id}", cmd, env, home)


@federate_app.command("run")
def run(
    superlink: str = typer.Option("127.0.0.1:9092", help="SuperLink address host:port."),
    rounds: int = typer.Option(_FED.rounds, help="Federated rounds."),
    labels: Optional[str] = typer.Option(None, help="Public event vocabulary, comma-separated (default: the app's)."),
    noise_multiplier: float = typer.Option(_FED.noise_multiplier, help="sigma: noise std is sigma * clip norm."),
    clip_norm: float = typer.Option(_FED.clip_norm, help="C: L2 bound of one device's update."),
    encoding: str = typer.Option(_FED.encoding, help="fp32 | fp16 | int8 (stochastic rounding: a quarter of fp32's bytes)."),
    mode: str = typer.Option(_FED.mode, help="device (noise on each device) | central (trusted server adds noise)."),
    min_devices: int = typer.Option(_FED.min_train_devices, help="Devices needed to start a round and to close it early."),
    straggler_grace: float = typer.Option(_FED.straggler_grace, help="Once --min-devices replied, the others get this "
                                          "fraction of the time taken so far (at least 5 s); 0 waits for all (or the timeout)."),
    model: str = typer.Option(_FED.model, help="lora (the shared LoRA adapter) | habit-scorer (the habit scorer's "
                              "shared weights, then the usefulness check; each device stores them for `suggest`)."),
    local_lr: Optional[float] = typer.Option(None, help="Step size of a device's local steps (default: the model's own: "
                                             f"lora {_FED.local_lr:g}, habit-scorer {SCORER_LR:g})."),
    home: Path = typer.Option(Path(".homebody-federation"), help=HOME_HELP),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP: tests on 127.0.0.1 only."),
    ca_cert: Optional[Path] = typer.Option(None, help="CA certificate (PEM)."),
) -> None:
    """Submit the homebody Flower app to the SuperLink and stream its log until it finishes."""
    from federation import deploy

    tls = _tls(insecure, ca_cert)
    if mode == "secagg":
        raise FederateCliError("secagg mode runs on Flower's legacy API: see docs/federation.md (federation.secagg)")
    cfg = FederationConfig(rounds=rounds, noise_multiplier=noise_multiplier, clip_norm=clip_norm, encoding=encoding, mode=mode,
                           min_available_devices=min_devices, min_train_devices=min_devices, min_evaluate_devices=min_devices,
                           straggler_grace=straggler_grace, model=model, local_lr=model_local_lr(model, local_lr))
    home = _absolute(home)
    env = deploy.flower_env(home)
    deploy.write_connection(Path(env["FLWR_HOME"]), superlink, tls, insecure)
    overrides = {k: v for k, v in cfg.to_record().items() if k in _RUN_KEYS}
    if labels:
        overrides["labels"] = labels
    _foreground("flwr-run", deploy.run_command(run_config=overrides), env, home)


def model_local_lr(model: str, local_lr: float | None) -> float:
    """`--local-lr` if given, else the model's own step size (the scorer's is not LoRA's)."""
    if local_lr is not None:
        return local_lr
    return SCORER_LR if model == "habit-scorer" else _FED.local_lr


_RUN_KEYS = ("rounds", "noise-multiplier", "clip-norm", "encoding", "mode", "min-available-devices", "min-train-devices",
             "min-evaluate-devices", "straggler-grace", "model", "local-lr")
