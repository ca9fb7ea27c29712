"""Running `homebody` in-process, the way a user's shell would, for tests that check exit codes and output."""

from __future__ import annotations

import re
import subprocess
import sys
import time


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


def serve_url(proc: subprocess.Popen, timeout_s: float = 120) -> str:
    """The API base URL a `homebody serve` subprocess prints when it is ready (its stdout, text mode)."""
    url, seen, deadline = None, [], time.time() + timeout_s
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        url = m.group(1) if m else None
    assert url, "server did not start:\n" + "".join(seen)
    return url
