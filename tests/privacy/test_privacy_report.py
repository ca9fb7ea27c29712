"""Reports: JSON content, and acceptance 5 (the HTML renders in headless Chromium with its plot and table)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from privacy.budget import BudgetPolicy, ReleaseGate
from privacy.report import DeviceSummary, ledger_report, population_report
from simulations.cli import app

from .priv_helpers import fill, sha, signed_db

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def chromium(html: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chrome'}",
           *args, html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def screenshot_is_rich(png: Path) -> None:
    """Non-blank: many distinct colours and a sizeable share of non-white pixels (plot lines, table)."""
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 300
    non_white = (img < 245).any(axis=2).mean()
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert non_white > 0.02, non_white
    assert colours > 50, colours


KEYS: dict[Path, bytes] = {}


@pytest.fixture(scope="module")
def vault_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rep") / "device.db"
    db, key = signed_db(path)
    KEYS[path] = key.private_bytes_raw()
    gate = ReleaseGate(db, signer=key, accountant="rdp")
    gate.set_policy("alice", "record", BudgetPolicy(4.0, 1e-5))
    fill(gate, 5)
    db.conn.close()
    return path


def test_json_report_has_budgets_per_unit_and_every_release(vault_file: Path, tmp_path: Path):
    """Without the passphrase the report names profiles by id only; the owner (device key) sees names."""
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["audit", "report", "--vault", str(vault_file), "--json", str(out), "--accountant", "rdp"])
    assert res.exit_code == 0, res.output
    anonymous = json.loads(out.read_text())
    assert "alice" not in out.read_text() and "bob" not in out.read_text()
    assert {b["profile"] for b in anonymous["budgets"]} == {b["profile_id"] for b in anonymous["budgets"]}
    db = sqlite_utils.Database(vault_file)
    key = Ed25519PrivateKey.from_private_bytes(KEYS[vault_file])
    rep = ledger_report(db, accountant="rdp", signer=key, names=["alice", "bob"])
    assert rep["verified"] is True and rep["problems"] == []
    assert len(rep["releases"]) == 5 and [r["seq"] for r in rep["releases"]] == [2, 3, 4, 5, 6]  # seq 1: the policy
    units = {(b["profile"], b["unit"]): b for b in rep["budgets"]}
    assert set(units) == {("alice", "record"), ("alice", "user"), ("bob", "record"), ("bob", "user")}
    a = units[("alice", "record")]
    assert a["cap"] == 4.0 and a["remaining"] == pytest.approx(4.0 - a["spent"])
    assert a["releases"] == sum(1 for r in rep["releases"] if r["profile"] == "alice" and r["unit"] == "record")
    bob = units[("bob", "user")]["profile_id"]
    one = runner.invoke(app, ["audit", "report", "--vault", str(vault_file), "--profile", bob, "--json", str(out),
                              "--accountant", "rdp"])
    assert one.exit_code == 0 and {r["profile"] for r in json.loads(out.read_text())["releases"]} == {bob}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (/usr/bin/chromium): cannot render the HTML report")
def test_acceptance5_html_report_renders_in_headless_chromium(vault_file: Path, tmp_path: Path):
    html = tmp_path / "report.html"
    res = runner.invoke(app, ["audit", "report", "--vault", str(vault_file), "--html", str(html), "--accountant", "rdp"])
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    png = tmp_path / "shot.png"
    shot = chromium(html, tmp_path, f"--screenshot={png}", "--window-size=1200,1400", "--hide-scrollbars")
    assert png.exists(), shot.stderr[-2000:]
    screenshot_is_rich(png)
    dom = chromium(html, tmp_path, "--dump-dom").stdout
    assert re.search(r'<img[^>]*id="epsilon-plot"[^>]*data-rendered="true"', dom), dom[:2000]
    width = int(re.search(r'id="epsilon-plot"[^>]*data-width="(\d+)"|data-width="(\d+)"[^>]*id="epsilon-plot"', dom).group(1)
                or 0)
    assert width > 300
    assert '<table id="releases">' in dom and dom.count("<tr>") >= 1 + 5 + 1 + 4  # headers + rows
    assert "Ledger verified" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (/usr/bin/chromium): cannot render the HTML report")
def test_population_report_html_and_json(tmp_path: Path):
    rng = np.random.default_rng(0)
    devices = [DeviceSummary(f"dev{i:03d}", float(rng.gamma(2.0, 0.8)), 1e-5, int(rng.integers(1, 30)), cap=4.0)
               for i in range(60)]
    devices.append(DeviceSummary("dev-worst", 7.5, 1e-5, 40, cap=4.0))
    html, js = tmp_path / "pop.html", tmp_path / "pop.json"
    rep = population_report(devices, html, js)
    data = json.loads(js.read_text())
    assert data == json.loads(json.dumps(rep))
    assert data["devices"] == 61 and data["worst_device"]["device_id"] == "dev-worst"
    assert data["epsilon"]["max"] == 7.5 and data["rounds"]["max"] == 40
    assert data["over_cap"] == sum(1 for d in devices if d.epsilon > 4.0)
    dom = chromium(html, tmp_path, "--dump-dom").stdout
    assert re.search(r'id="population-plot"[^>]*data-rendered="true"', dom)
    assert 'id="worst-device">dev-worst<' in dom and '<table id="devices">' in dom


def test_device_summary_from_a_ledger(tmp_path: Path):
    db, key = signed_db(tmp_path / "d.db")
    gate = ReleaseGate(db, signer=key, accountant="rdp")
    from privacy.accountant import SubsampledGaussian

    for r in range(3):
        gate.commit("dev7", "user", SubsampledGaussian(1.0, 0.1, 1), sha(f"round {r}"), mechanism="fed-round",
                    details={"rng": "os-csprng"})
    s = DeviceSummary.from_ledger(db, "dev7", "dev7", accountant="rdp", signer=key)
    assert s.rounds == 3 and s.unit == "user" and s.epsilon == pytest.approx(gate.spent("dev7", "user"))
