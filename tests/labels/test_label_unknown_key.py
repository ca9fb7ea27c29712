"""Issue 13 item 6: a manifest re-signed by another key is never "valid" unless that key is trusted.

The attacker edits a homebody answer, flips `ai_generated` to false and re-signs the manifest with
their own Ed25519 key (the public key travels in the manifest, so the signature itself holds).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from personal.provenance import LabelConfig, ManifestError, Provenance, key_id, label_text, verify_labelled
from personal.provenance.manifest import raw_public_key, sign_manifest
from simulations.cli import app

PROV = Provenance("homebody", "0.1.0", "smollm2-135m", "12" * 32)
PASS = "pass phrase 13"
runner = CliRunner()


def _resign(manifest: dict, forger: Ed25519PrivateKey, **changes) -> dict:
    """The manifest with `changes` applied and re-signed by `forger` (signer block replaced)."""
    body = {k: v for k, v in manifest.items() if k not in ("signature", "signer")}
    body.update(changes)
    return sign_manifest(body, forger)


@pytest.fixture()
def device(tmp_path, monkeypatch):
    """A real vault (its device key signs the answer), the answer on disk and a forger's key."""
    from personal.vault import Vault, VaultConfig

    vault = tmp_path / "v.db"
    with Vault.create(vault, PASS, VaultConfig(fast_kdf=True)) as v:
        signer = v.signing_key()
    monkeypatch.setenv("HOMEBODY_PASSPHRASE", PASS)
    text, sidecar = label_text("Your usual Friday: cinema at 20:00.", PROV, signer, LabelConfig()).save(tmp_path / "a.txt")
    return vault, signer, text, sidecar, Ed25519PrivateKey.generate()


def _verify(*args: str) -> tuple[int, dict]:
    res = runner.invoke(app, ["label", "verify", *args, "--json"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.stdout)


def test_resigned_human_claim_is_never_valid(device):
    _, _, text, sidecar, forger = device
    sidecar.write_text(json.dumps(_resign(json.loads(sidecar.read_text()), forger, ai_generated=False)))
    code, verdict = _verify(str(text))
    assert code == 1 and verdict["status"] != "valid" and not verdict["ok"]
    # Even when the caller trusts the forger's key: homebody never signs a human-authorship claim.
    code, verdict = _verify(str(text), "--public-key", raw_public_key(forger.public_key()).hex())
    assert code == 1 and verdict["status"] == "tampered" and "AI-generated" in verdict["reason"]


def test_resigned_manifest_is_an_unknown_key_without_a_trusted_key(device):
    _, _, text, sidecar, forger = device
    sidecar.write_text(json.dumps(_resign(json.loads(sidecar.read_text()), forger)))
    res = runner.invoke(app, ["label", "verify", str(text)])
    assert res.exit_code == 1
    assert res.stdout.startswith("untrusted:") and "valid signature by an unknown key" in res.stdout
    code, verdict = _verify(str(text))
    assert code == 1 and verdict["trusted"] is False and verdict["key_id"] == key_id(forger.public_key())


def test_device_key_from_the_vault_is_trusted_and_others_are_not(device):
    vault, signer, text, sidecar, forger = device
    code, verdict = _verify(str(text), "--vault", str(vault))
    assert code == 0 and verdict["status"] == "valid" and verdict["trusted"] is True
    assert verdict["key_id"] == key_id(signer.public_key())
    # Without a trusted key the genuine answer is intact but only "untrusted".
    code, verdict = _verify(str(text))
    assert code == 1 and verdict["status"] == "untrusted"
    sidecar.write_text(json.dumps(_resign(json.loads(sidecar.read_text()), forger)))
    code, verdict = _verify(str(text), "--vault", str(vault))
    assert code == 1 and verdict["status"] == "untrusted" and verdict["key_id"] == key_id(forger.public_key())


def test_library_verdict_names_the_signer_and_the_trust(device):
    _, signer, text, sidecar, forger = device
    manifest = json.loads(sidecar.read_text())
    body = text.read_text(encoding="utf-8")
    alone = verify_labelled(body, manifest)
    assert (alone.status, alone.trusted, alone.ok, alone.key_id) == ("untrusted", False, False, key_id(signer.public_key()))
    trusted = verify_labelled(body, manifest, trusted_keys=[forger.public_key(), signer.public_key()])
    assert trusted.ok and trusted.trusted and trusted.key_id == key_id(signer.public_key())
    # A human-authorship claim signed by the trusted device key itself is still refused.
    claim = _resign(manifest, signer, ai_generated=False)
    assert verify_labelled(body, claim, signer.public_key()).status == "tampered"
    other_source = _resign(manifest, signer, digital_source_type="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture")
    assert verify_labelled(body, other_source, signer.public_key()).status == "tampered"
    for odd in ({"content": ["not", "an", "object"]}, {"label": "x", "content": None}):
        assert verify_labelled(body, _resign(manifest, forger, **odd), forger.public_key()).status == "tampered"
    with pytest.raises(ManifestError):
        verify_labelled(body, manifest, trusted_keys=["not a key"])


def test_malformed_public_key_is_one_line_and_non_zero(device):
    _, _, text, _, _ = device
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "label", "verify", str(text), "--public-key", "abc"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "public key" in out.stderr
