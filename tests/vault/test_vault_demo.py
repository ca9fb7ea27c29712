"""`homebody demo` (what `make demo` runs) walks through the vault and reports what it measured."""

from __future__ import annotations


def test_demo_walkthrough_runs_and_reports_no_leaks(run_cli):
    code, out, err = run_cli("demo", "--skip-simulation", passphrase=None)
    assert code == 0, err
    assert "imported 56 synthetic events" in out
    assert "none found" in out  # no marker, name or timestamp in the raw file bytes
    assert "0 of sam's 28 ciphertexts left" in out
    assert "verify ok = False" in out and "table events" in out  # the tampered copy is caught
    assert "wrong passphrase" in out
