"""`homebody personalize | suggest` from the command line: one-line errors, nothing changed (acceptance 4)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from personal.vault import Vault, VaultConfig
from privacy.budget import BudgetPolicy, ReleaseGate
from simulations import cli
from tests.personal.pers_helpers import routine_owner


def _homebody(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real console entry (`main`, which turns errors into one line) in this process."""
    monkeypatch.setattr(sys, "argv", ["homebody", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_cli_refuses_on_spent_budget_and_without_adapter(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", "pw")
    path = tmp_path / "v.db"
    with Vault.create(path, "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner("ana", weeks=2))
        ReleaseGate(v.db, signer=v.signing_key()).set_policy("ana", "record", BudgetPolicy(epsilon_cap=0.2, delta=1e-5))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, _, err = _homebody(monkeypatch, capsys, "personalize", "--profile", "ana", "--model", "tiny",
                             "--noise-multiplier", "0.7", "--vault", str(path))
    lines = [ln for ln in err.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert code == 1 and len(lines) == 1, err
    assert "budget exhausted" in lines[0] and "0.2 remains" in lines[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    code, _, err = _homebody(monkeypatch, capsys, "suggest", "--profile", "ana", "--model", "tiny", "--predictor", "lora",
                             "--at", "2026-01-21T06:55", "--vault", str(path))
    assert code == 1 and "no adapter for tiny" in err and "homebody personalize" in err
    code, _, err = _homebody(monkeypatch, capsys, "personalize", "--profile", "ana", "--non-private", "--epsilon", "1",
                             "--vault", str(path))
    assert code == 1 and "--non-private excludes" in err
    code, _, err = _homebody(monkeypatch, capsys, "suggest", "--profile", "ana", "--at", "Wednesday", "--vault", str(path))
    assert code == 1 and "not an ISO time" in err
