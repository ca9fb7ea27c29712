"""Acceptance 1: examples/assistant_app.py (official `openai` client) against a real `homebody serve` subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import PASSPHRASE, make_vault
from tests.cli_support import serve_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path):
    """`homebody serve --port 0` with the tiny models on 127.0.0.1; yields (url, vault); stopped in teardown."""
    vault = make_vault(tmp_path / "vault.db", events=3)
    env = {**os.environ, "HOMEBODY_PASSPHRASE": PASSPHRASE, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "simulations.cli", "serve", "--vault", str(vault), "--port", "0", "--model", "tiny",
           "--max-new-tokens", "8", "--max-tokens-cap", "8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = serve_url(proc)
        yield url, vault
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if shutdown hangs
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0 or proc.returncode == -15


def test_example_app_runs_against_homebody_serve(served):
    url, vault = served
    token_file = vault.with_name(vault.name + ".token")
    assert httpx.get(url + "/models", timeout=30).status_code == 401
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "assistant_app.py"), "--url", url, "--token-file",
                          str(token_file), "--noise-multiplier", "1.0", "--max-tokens", "6"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "models: ['tiny-causal', 'tiny']" in text
    assert "recorded 21 events (30 stored)" in text
    assert re.search(r"personalized: DP-SGD epsilon=\S+ delta=1e-05", text)
    assert re.search(r"suggestions for Monday 08:00: (Coffee Shop|Office|Park|Subway) ", text)
    assert "answer: [AI-generated]" in text and "label: [AI-generated] | manifest signed by" in text
    assert "streamed: [AI-generated]" in text and "stream manifest signed: True" in text
    assert re.search(r"budget \(record\): spent 0\.\d+|budget \(record\): spent [1-7]\.", text)
    assert '"answer_labelled": true' in text
