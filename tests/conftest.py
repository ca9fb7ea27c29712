"""Shared fixtures: the data root (tests that need real data skip cleanly without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The bundled-data root ($HOMEBODY_DATA or ../shared/data)."""
    from simulations.datasets import data_root as _data_root

    return _data_root()


def require_dataset(root: Path, name: str) -> Path:
    """Skip the calling test with a clear message when a bundled dataset is absent."""
    path = root / name
    if not path.is_dir():
        pytest.skip(f"dataset {name!r} not found under {root}: set HOMEBODY_DATA to the shared data folder")
    return path
