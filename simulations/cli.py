"""The `homebody` command: one root that composes each folder's sub-commands.

It lives on the top floor because it imports every folder. Each folder's CLI module
exposes `register(app)`; heavy imports (torch, transformers, flwr) stay inside the
commands so that `homebody --help` is instant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from privacy.errors import HomebodyError

app = typer.Typer(
    name="homebody",
    help="Privacy-preserving on-device personalization: encrypted vault, DP-LoRA, auditable budgets, federation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


@dataclass
class CliState:
    """What the root options hand down to every command (via `ctx.obj`)."""

    data_dir: Optional[Path] = None


def _version_callback(value: bool) -> None:
    if value:
        try:
            print(f"homebody {version('homebody')}")
        except PackageNotFoundError:
            print("homebody (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder of the bundled datasets (default: $HOMEBODY_DATA or ../shared/data)."
    ),
    show_version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """homebody: a compact model learns one person's habits on their own device."""
    ctx.obj = CliState(data_dir=data_dir)


def _register_all() -> None:
    # One line per folder's CLI module; each adds its commands or sub-apps to `app`.
    from personal import cli_vault

    cli_vault.register(app)
    from personal import cli_label

    cli_label.register(app)
    from personal import cli_model

    cli_model.register(app)
    from personal import cli_slim

    cli_slim.register(app)
    from personal import cli_serve

    cli_serve.register(app)
    from privacy import cli as privacy_cli

    privacy_cli.register(app)
    from simulations import empirical_audit

    empirical_audit.register(app)
    from federation import cli as federation_cli

    federation_cli.register(app)
    from simulations import cli_simulate

    cli_simulate.register(app)
    from simulations import cli_sweep

    cli_sweep.register(app)
    from simulations import cli_demo

    cli_demo.register(app)


_register_all()


def main() -> None:
    """Console-script entry: a HomebodyError becomes one line on stderr and a non-zero exit."""
    try:
        app()
    except HomebodyError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
