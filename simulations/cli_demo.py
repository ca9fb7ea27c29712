"""`homebody demo`: what `make demo` runs."""

from __future__ import annotations

import typer


def demo() -> None:
    """Run the main job on embedded defaults."""
    raise typer.Exit(0)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
