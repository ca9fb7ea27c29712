"""Slim folders: manifest, weights hash, exact reload through load_base, name specs, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from personal.models import load_base
from personal.slim.folder import load_slim_model
from personal.slim.manifest import SlimError, SlimManifest, is_slim_folder
from personal.slim.pipeline import SlimConfig, parse_spec, slim_to_folder
from personal.slim.prune import PruneConfig
from personal.slim.quantize import Int4Linear, Int8Embedding, Int8Linear
from simulations.cli import app

IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 2000, 2022, 2030, 2025, 2000, 2022, 102]])


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEBODY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name,cfg", [
    ("tiny-causal", SlimConfig(quantize="int8", prune=PruneConfig(mlp=0.25))),
    ("tiny-causal", SlimConfig(quantize="int4")),
    ("tiny", SlimConfig(quantize="int8")),
])
def test_folder_round_trip_is_exact_and_loads_through_load_base(tmp_path, name, cfg):
    base = load_base(name)
    source = base.identity()
    manifest = slim_to_folder(base, cfg, tmp_path / "slim")
    expected = base.model(input_ids=IDS, attention_mask=(IDS > 0).long())[0]
    assert is_slim_folder(tmp_path / "slim")
    on_disk = SlimManifest.read(tmp_path / "slim")
    assert on_disk.source == source and on_disk.kind == base.kind
    assert on_disk.step_names() == (["prune", "quantize"] if not cfg.prune.empty else ["quantize"])
    assert len(on_disk.weights_sha256) == 64 and on_disk.weights_sha256 == manifest.weights_sha256
    slim = load_base(str(tmp_path / "slim"))
    assert slim.identity()["sha256"] == on_disk.weights_sha256 and slim.kind == base.kind
    assert isinstance(slim.model.get_input_embeddings(), Int8Embedding)
    kinds = {type(m) for m in slim.model.modules()}
    assert (Int4Linear if cfg.quantize == "int4" else Int8Linear) in kinds
    assert not any(p.requires_grad for p in slim.model.parameters())
    got = slim.model(input_ids=IDS, attention_mask=(IDS > 0).long())[0]
    assert torch.equal(got, expected)


def test_weights_are_smaller_and_tampering_is_detected(tmp_path):
    base = load_base("tiny-causal")
    float_bytes = sum(p.numel() * 4 for p in base.model.parameters())
    m = slim_to_folder(base, SlimConfig(quantize="int8"), tmp_path / "s")
    assert m.weights_bytes < 0.3 * float_bytes + 100_000
    weights = tmp_path / "s" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SlimError, match="SHA-256 does not match"):
        load_slim_model(tmp_path / "s")


def test_bad_manifest_and_refusals(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "slim.json").write_text("{not json")
    with pytest.raises(SlimError, match="not valid JSON"):
        SlimManifest.read(tmp_path / "x")
    (tmp_path / "x" / "slim.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SlimError, match="not a homebody-slim/1 manifest"):
        SlimManifest.read(tmp_path / "x")
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(SlimError, match="refusing to overwrite"):
        slim_to_folder(load_base("tiny"), SlimConfig(quantize="int8"), keep)
    assert (keep / "notes.txt").read_text() == "mine"


def test_name_specs_parse_and_fail_clearly():
    cfg = parse_spec("prune0.25+int8")
    assert cfg.quantize == "int8" and cfg.prune.mlp == 0.25
    assert parse_spec("int4").quantize == "int4" and parse_spec("heads1").prune.heads == 1
    for bad in ("int3", "int8+int4", "prune1.5", "prune0.25+bogus"):
        with pytest.raises(SlimError):
            parse_spec(bad)


def test_spec_name_is_slimmed_once_and_cached(cache):
    first = load_base("tiny:int8")
    folders = list((cache / "slim").iterdir())
    assert len(folders) == 1 and is_slim_folder(folders[0])
    mtime = (folders[0] / "model.safetensors").stat().st_mtime_ns
    second = load_base("tiny:int8")
    assert second.identity() == first.identity() and first.name == "tiny:int8"
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == mtime


def test_cli_slim_writes_a_folder_personalize_can_use(tmp_path):
    runner = CliRunner()
    out = tmp_path / "slimmed"
    res = runner.invoke(app, ["slim", "--model", "tiny-causal", "--quantize", "int8", "--prune", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "slim base written" in res.output and "sha256" in res.output
    manifest = SlimManifest.read(out)
    assert manifest.step_names() == ["prune", "quantize"]
    model, _ = load_slim_model(out)
    assert model.config.intermediate_size == 32  # tiny-causal's 64 MLP channels, half removed


def test_cli_errors_are_one_line(tmp_path):
    from simulations.cli import main

    runner = CliRunner()
    for args, msg in ((["--quantize", "int3"], "--quantize must be"),
                      ([], "nothing to do"),
                      (["--distil-from", "tiny-causal"], "--distil-from needs --data")):
        res = runner.invoke(app, ["slim", "--model", "tiny-causal", "--out", str(tmp_path / "o"), *args])
        assert res.exit_code != 0 and msg in str(res.exception), (args, res.output)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from simulations.cli import main; main()", "slim", "--model",
                           "tiny-causal", "--quantize", "int3", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "int3" in proc.stderr
    assert main  # the entry point the console script uses
