"""Acceptance 3: a slimmed base is selectable from `homebody personalize --model` and
`homebody simulate --model`, by folder path or by name (BASE:STEPS)."""

from __future__ import annotations

import json

from personal.events_io import read_events
from personal.personalize import load_adapter
from personal.slim.manifest import SlimManifest
from personal.slim.pipeline import SlimConfig, slim_to_folder
from personal.vault import Vault, VaultConfig

from tests.cli_support import run_homebody

EVENTS = "\n".join(
    ["user,timestamp,event,place"]
    + [f"ana,2026-03-{d:02d}T07:{m:02d}:00,{ev},{pl}" for d in range(2, 12) for m, ev, pl in
       ((0, "gym", "club"), (30, "coffee", "cafe"), (59, "office", "work"))]
) + "\n"


def test_personalize_on_a_slim_folder(monkeypatch, capsys, tmp_path):
    from personal.models import load_base

    folder = tmp_path / "tiny-int8"
    manifest = slim_to_folder(load_base("tiny"), SlimConfig(quantize="int8"), folder)
    vault = tmp_path / "v.db"
    events_file = tmp_path / "e.csv"
    events_file.write_text(EVENTS)
    with Vault.create(vault, "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(read_events(events_file).events)
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", "pw")
    code, out, err = run_homebody(monkeypatch, capsys, "personalize", "--vault", str(vault), "--profile", "ana",
                          "--model", str(folder), "--noise-multiplier", "1.0", "--epochs", "2")
    assert code == 0, err
    slim = load_base(str(folder))
    with Vault.open(vault, "pw") as v:
        adapter = load_adapter(v, "ana", slim)  # refuses an adapter made for another base
    assert adapter.base_identity["sha256"] == manifest.weights_sha256
    assert adapter.labels and any(k.startswith("head") for k in adapter.tensors)


def test_simulate_on_a_slim_name(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOMEBODY_CACHE", str(tmp_path / "cache"))
    events = tmp_path / "events.csv"
    events.write_text(EVENTS.replace("ana,", "ben,", 15) + EVENTS.split("\n", 1)[1])
    out = tmp_path / "sim"
    code, stdout, err = run_homebody(monkeypatch, capsys, "simulate", "--dataset", f"events:{events}", "--model", "tiny:int8",
                             "--rounds", "1", "--mode", "local", "--out", str(out))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == "tiny:int8"
    slim_folders = list((tmp_path / "cache" / "slim").iterdir())
    assert len(slim_folders) == 1 and SlimManifest.read(slim_folders[0]).step_names() == ["quantize"]
