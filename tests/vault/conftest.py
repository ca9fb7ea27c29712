"""Fixtures for the vault tests: small synthetic events, fast-KDF vaults, raw-byte helpers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from personal.vault import Event, Vault, VaultConfig
from tests.cli_support import run_homebody

PASS = "test passphrase"
FAST = VaultConfig(fast_kdf=True)
REPO = Path(__file__).resolve().parents[2]


def make_events(n: int, users: tuple[str, ...] = ("ann", "bob"), start: datetime | None = None, tag: str = "") -> list[Event]:
    """`n` events spread over `users`, one minute apart, with context and occasional free text."""
    start = start or datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc)
    return [
        Event(
            users[i % len(users)],
            start + timedelta(minutes=i),
            f"event{i % 7}{tag}",
            {"place": f"place{i % 5}", "seq": str(i)},
            f"note {i}{tag}" if i % 3 == 0 else None,
        )
        for i in range(n)
    ]


def content_hash(vault: Vault) -> str:
    """A hash over every profile's opened events and artefacts (order-independent of storage)."""
    h = hashlib.sha256()
    for profile in vault.profiles():
        h.update(profile.encode())
        for ev in vault.events(profile):
            h.update(json.dumps([ev.user, ev.timestamp.isoformat(), ev.event, ev.context, ev.text]).encode())
        for kind, name in vault.list_artefacts(profile):
            data, meta = vault.get_artefact(profile, kind, name)
            h.update(kind.encode() + name.encode() + data + json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def raw_bytes(path: Path) -> bytes:
    """The database file plus its WAL and rollback journal, as found on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


def cli(*args: str, passphrase: str | None = PASS, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real `homebody` CLI in a subprocess (the passphrase through the environment)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("HOMEBODY_PASSPHRASE", "HOMEBODY_VAULT")}
    if passphrase is not None:
        full_env["HOMEBODY_PASSPHRASE"] = passphrase
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, env=full_env, cwd=REPO,
        stdin=subprocess.DEVNULL, timeout=120, **kw,
    )


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
def vault(vault_path: Path):
    with Vault.create(vault_path, PASS, FAST) as v:
        yield v


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `homebody` in-process through its console entry (`main`): returns (exit code, stdout, stderr)."""

    def run(*args: str, passphrase: str | None = PASS) -> tuple[int, str, str]:
        monkeypatch.delenv("HOMEBODY_VAULT", raising=False)
        if passphrase is None:
            monkeypatch.delenv("HOMEBODY_PASSPHRASE", raising=False)
        else:
            monkeypatch.setenv("HOMEBODY_PASSPHRASE", passphrase)
        return run_homebody(monkeypatch, capsys, *args)

    return run
