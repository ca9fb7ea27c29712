"""`homebody vault ...`: the encrypted personal store, from the command line."""

from __future__ import annotations

import typer

vault_app = typer.Typer(help="The encrypted vault of habit events (init, import, add, list, export, forget, ...).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(vault_app, name="vault")
