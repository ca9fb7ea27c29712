"""Log lines for a Flower run."""

from __future__ import annotations

from typing import Any


def flower_log(level: int, fmt: str, *args: Any) -> None:
    """Log through Flower's logger too, so that `flwr run --stream` and `flwr log` show the line."""
    from flwr.common import log

    log(level, "[homebody] " + fmt, *args)
