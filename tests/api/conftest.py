"""Fixtures for the app-integration tests: a small real vault (fast KDF) with a token, and live servers."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

PASSPHRASE = "api-test-passphrase"
PROFILE = "ana"
CHAT_TOKENS = 4  # tiny-causal answers stay a few tokens long: the tests check plumbing, not prose


def owner_events(days: int = 10, seed: int = 0) -> list[dict]:
    """A small routine as API/SDK event mappings: coffee most mornings, office or park, subway home."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5)
    out = []
    for d in range(days):
        day = start + timedelta(days=d)
        out.append({"event": "Coffee Shop", "timestamp": day.replace(hour=8, minute=rng.randint(0, 30)).isoformat()})
        out.append({"event": "Office" if day.weekday() < 5 else "Park", "timestamp": day.replace(hour=9).isoformat(),
                    "context": {"weather": rng.choice(["sun", "rain"])}})
        out.append({"event": "Subway", "timestamp": day.replace(hour=18, minute=rng.randint(0, 40)).isoformat()})
    return out


def make_vault(path: Path, events: int = 10) -> Path:
    """A fast-KDF vault with the owner's events and its API token."""
    from personal.assistant import Assistant
    from personal.vault import VaultConfig

    with Assistant.create(path, PASSPHRASE, PROFILE, model="tiny-causal", vault_config=VaultConfig(fast_kdf=True)) as a:
        a.record(owner_events(events))
    return path


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    return make_vault(tmp_path / "vault.db")


def open_assistant(path: Path, **kw):
    from personal.assistant import Assistant

    kw.setdefault("max_new_tokens", CHAT_TOKENS)
    return Assistant.open(path, PASSPHRASE, PROFILE, kw.pop("model", "tiny-causal"), **kw)


@pytest.fixture
def live_api(tmp_path: Path):
    """A real uvicorn server on 127.0.0.1 (in a thread) over a fresh vault: (url, token, assistant)."""
    from personal.auth import read_token
    from personal.server import start_in_thread

    path = make_vault(tmp_path / "vault.db")
    assistant = open_assistant(path, token_cap=CHAT_TOKENS)
    token = read_token(path)
    server, url = start_in_thread(assistant, token, max_body_bytes=64 * 1024)
    yield url, token, assistant
    server.should_exit = True
    server.thread.join(10)
    assistant.close()
