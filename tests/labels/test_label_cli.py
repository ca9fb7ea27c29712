"""`homebody label verify|detect`: verdicts, exit codes and one-line errors, on real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from personal.provenance import LabelConfig, ManifestError, Provenance, WatermarkError, label_text
from simulations.cli import app

PROV = Provenance("homebody", "0.1.0", "smollm2-135m", "12" * 32)
runner = CliRunner()


@pytest.fixture()
def saved(signer, tmp_path):
    out = label_text("Your usual Friday: cinema at 20:00.", PROV, signer, LabelConfig(language="zh"))
    return out.save(tmp_path / "answer.txt")


def _trust(signer) -> list[str]:
    from personal.provenance.manifest import raw_public_key

    return ["--public-key", raw_public_key(signer.public_key()).hex()]


def test_verify_valid_then_tampered_text(saved, signer):
    text, _ = saved
    ok = runner.invoke(app, ["label", "verify", str(text), *_trust(signer)])
    assert ok.exit_code == 0 and ok.stdout.startswith("valid:"), ok.stdout
    body = text.read_text(encoding="utf-8")
    text.write_text(body.replace("20:00", "21:00"), encoding="utf-8", newline="")
    bad = runner.invoke(app, ["label", "verify", str(text), "--json"])
    assert bad.exit_code == 1
    verdict = json.loads(bad.stdout)
    assert verdict["status"] == "tampered" and "content changed" in verdict["reason"]


def test_verify_tampered_manifest_and_explicit_manifest_path(saved, tmp_path, signer):
    text, sidecar = saved
    manifest = json.loads(sidecar.read_text())
    moved = tmp_path / "elsewhere.json"
    moved.write_text(json.dumps(manifest))
    sidecar.unlink()
    assert runner.invoke(app, ["label", "verify", str(text), "-m", str(moved), *_trust(signer)]).exit_code == 0
    manifest["model"]["base"] = "gpt-9"
    moved.write_text(json.dumps(manifest))
    res = runner.invoke(app, ["label", "verify", str(text), "--manifest", str(moved)])
    assert res.exit_code == 1 and res.stdout.startswith("tampered:") and "signature" in res.stdout
    moved.write_text("{not json")
    res = runner.invoke(app, ["label", "verify", str(text), "--manifest", str(moved)])
    assert res.exit_code == 1 and res.stdout.startswith("tampered:")


def test_verify_unsigned(saved):
    text, sidecar = saved
    manifest = json.loads(sidecar.read_text())
    del manifest["signature"]
    sidecar.write_text(json.dumps(manifest))
    res = runner.invoke(app, ["label", "verify", str(text)])
    assert res.exit_code == 1 and res.stdout.startswith("unsigned:")
    sidecar.unlink()
    res = runner.invoke(app, ["label", "verify", str(text)])
    assert res.exit_code == 1 and "no manifest found" in res.stdout


def test_verify_with_expected_public_key(saved, signer):
    from personal.provenance.manifest import raw_public_key

    text, _ = saved
    good = raw_public_key(signer.public_key()).hex()
    assert runner.invoke(app, ["label", "verify", str(text), "--public-key", good]).exit_code == 0
    res = runner.invoke(app, ["label", "verify", str(text), "--public-key", "00" * 32])
    assert res.exit_code == 1 and "expected key" in res.stdout


def test_bad_input_is_one_line_on_stderr(tmp_path):
    missing = tmp_path / "missing.txt"
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "label", "verify", str(missing)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "no such file" in out.stderr
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    res = runner.invoke(app, ["label", "verify", str(binary)])
    assert isinstance(res.exception, ManifestError) and "not UTF-8" in str(res.exception)


def test_detect_reads_key_file_manifest_and_label(generations, tmp_path, monkeypatch):
    key, marked, plain = generations
    path, _ = marked[0].save(tmp_path / "gen.txt")
    key_file = tmp_path / "wm.key"
    key_file.write_text(key.hex())
    res = runner.invoke(app, ["label", "detect", str(path), "--watermark-key", str(key_file), "--tokenizer", "tiny-causal", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["verdict"] == "watermarked" and d["score"] > 4 and d["p_value"] < 1e-4
    plain_path, _ = plain.save(tmp_path / "plain.txt")
    monkeypatch.setenv("HOMEBODY_WATERMARK_KEY", key.hex())
    res = runner.invoke(app, ["label", "detect", str(plain_path), "--tokenizer", "tiny-causal"])
    assert res.exit_code == 0 and "verdict: not watermarked" in res.stdout and "p-value" in res.stdout


def test_detect_without_key_is_a_typed_error(saved, monkeypatch):
    text, _ = saved
    monkeypatch.delenv("HOMEBODY_WATERMARK_KEY", raising=False)
    monkeypatch.setenv("HOMEBODY_VAULT", str(text.parent / "no-vault.db"))
    res = runner.invoke(app, ["label", "detect", str(text), "--tokenizer", "tiny-causal"])
    assert isinstance(res.exception, WatermarkError)


def test_key_command_and_detect_with_the_device_key(tmp_path, monkeypatch, tiny_causal):
    from personal.provenance import derive_watermark_key, generate_labelled, provenance_for
    from personal.provenance.manifest import raw_public_key
    from personal.vault import Vault, VaultConfig
    from tests.labels.conftest import one_thread

    vault_path = tmp_path / "v.db"
    with Vault.create(vault_path, "pass phrase 1", VaultConfig(fast_kdf=True)) as v:
        signer = v.signing_key()
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", "pass phrase 1")
    monkeypatch.delenv("HOMEBODY_WATERMARK_KEY", raising=False)
    exported = tmp_path / "wm.key"
    res = runner.invoke(app, ["label", "key", "--vault", str(vault_path), "--export-watermark-key", str(exported)])
    assert res.exit_code == 0, res.output
    assert f"public key: {raw_public_key(signer.public_key()).hex()}" in res.stdout
    assert exported.read_text().strip() == derive_watermark_key(signer).hex()
    assert oct(exported.stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(app, ["label", "key", "--vault", str(vault_path), "--export-watermark-key", str(exported)])
    assert isinstance(again.exception, WatermarkError)  # never overwrites a key file

    import torch

    torch.manual_seed(3)
    with one_thread():
        out = generate_labelled(tiny_causal.model, tiny_causal.tokenizer, "hello", provenance_for(tiny_causal), signer,
                                watermark_key=derive_watermark_key(signer), max_new_tokens=80, min_new_tokens=80)
    path, _ = out.save(tmp_path / "a.txt")
    res = runner.invoke(app, ["label", "detect", str(path), "--vault", str(vault_path), "--tokenizer", "tiny-causal", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "watermarked"
