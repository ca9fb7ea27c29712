"""Federation test helpers: tiny chronological devices and a private Flower/Ray home."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ACTIVITIES = ["gym", "coffee", "work", "lunch", "home"]


def routine_examples(offset: int, n: int = 30, user: str = "u"):
    """A device whose events cycle through ACTIVITIES every 3 hours (shifted by `offset`)."""
    from personal.examples import events_to_examples
    from personal.vault import Event

    start = datetime(2024, 1, 1, 7)
    events = [Event(user, start + timedelta(hours=3 * i), ACTIVITIES[(i + offset) % len(ACTIVITIES)]) for i in range(n)]
    return events, events_to_examples(events)


@pytest.fixture
def flower_env(tmp_path, monkeypatch):
    """Keep Flower's and Ray's files in a temp folder and telemetry off.

    Ray's unix-socket paths must stay under ~107 characters, so its folder is a short /tmp one.
    """
    ray_dir = Path(tempfile.mkdtemp(prefix="hbray", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_dir))
    for var, sub in (("FLWR_HOME", "flwr"), ("UV_CACHE_DIR", "uv")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    # Ray starts its workers at niceness 15: on a busy machine the virtual devices then starve.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tmp_path
    shutil.rmtree(ray_dir, ignore_errors=True)
