"""Running `homebody` in-process, the way a user's shell would, for tests that check exit codes and output."""

from __future__ import annotations

import sys


def run_homebody(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `homebody ARGS` through its console entry (`main`): (exit code, stdout, stderr)."""
    from simulations.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["homebody", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
