"""Visible labels and signed manifests: untouched pairs verify, any one-character or one-field change is tampered."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from personal.provenance import (
    DEFAULT_WORDING,
    LabelConfig,
    LabelError,
    LabelledText,
    ManifestError,
    Provenance,
    canonical_json,
    key_id,
    label_text,
    sha256_text,
    verify_labelled,
)

PROV = Provenance("homebody", "0.1.0", "smollm2-135m", "12" * 32, "34" * 32, "ff" * 16)
CONTENT = "Gym at 07:00, as usual on Wednesdays."


@pytest.mark.parametrize("language", ["en", "zh", "pt"])
@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_label_variants_and_placement(signer, language, placement):
    out = label_text(CONTENT, PROV, signer, LabelConfig(language=language, placement=placement))
    assert out.label == DEFAULT_WORDING[language]
    assert str(out) == (f"{out.label} {CONTENT}" if placement == "prefix" else f"{CONTENT} {out.label}")
    assert out.content == CONTENT
    assert verify_labelled(str(out), out.manifest, signer.public_key()).status == "valid"


def test_chinese_label_names_ai_generation(signer):
    out = label_text(CONTENT, PROV, signer, LabelConfig(language="zh"))
    assert "人工智能生成" in str(out)


def test_custom_wording_and_separator(signer):
    cfg = LabelConfig(wording="Written by your assistant (AI)", placement="suffix", separator="\n\n")
    out = label_text(CONTENT, PROV, signer, cfg)
    assert str(out) == CONTENT + "\n\nWritten by your assistant (AI)"
    assert out.manifest["label"] == {"text": cfg.label, "language": "en", "placement": "suffix", "separator": "\n\n"}
    assert verify_labelled(str(out), out.manifest, signer.public_key()).ok


@pytest.mark.parametrize(
    "kwargs", [{"language": "fr"}, {"placement": "middle"}, {"wording": "  "}, {"wording": ""}]
)
def test_bad_label_config_is_one_typed_error(kwargs):
    with pytest.raises(LabelError):
        LabelConfig(**kwargs)


def test_manifest_records_the_provenance(signer):
    out = label_text(CONTENT, PROV, signer)
    m = out.manifest
    assert m["ai_generated"] is True
    assert m["digital_source_type"].endswith("trainedAlgorithmicMedia")
    assert m["generator"] == {"name": "homebody", "version": "0.1.0"}
    assert m["model"] == {"base": "smollm2-135m", "base_sha256": "12" * 32, "adapter_sha256": "34" * 32}
    assert m["content"]["sha256"] == sha256_text(CONTENT)
    assert m["content"]["labelled_sha256"] == sha256_text(str(out))
    assert m["watermark"] == {"key_id": "ff" * 16}
    assert m["signer"]["key_id"] == key_id(signer.public_key())
    assert m["created"].endswith("Z")
    # The adapter is named by its hash only; the signed bytes are canonical JSON.
    body = {k: v for k, v in m.items() if k != "signature"}
    assert canonical_json(body) == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_bad_provenance_is_one_typed_error():
    with pytest.raises(ManifestError):
        Provenance("homebody", "0.1.0", "smollm2-135m", "not-a-hash")
    with pytest.raises(ManifestError):
        Provenance("", "0.1.0", "smollm2-135m", "12" * 32)


def test_every_one_character_change_is_tampered(signer):
    for cfg in (LabelConfig(), LabelConfig(language="zh", placement="suffix")):
        out = label_text("Run 5 km?", PROV, signer, cfg)
        text = str(out)
        assert verify_labelled(text, out.manifest, signer.public_key()).status == "valid"
        for i, ch in enumerate(text):
            changed = text[:i] + ("x" if ch != "x" else "y") + text[i + 1 :]
            assert verify_labelled(changed, out.manifest, signer.public_key()).status == "tampered", (i, changed)
            deleted = text[:i] + text[i + 1 :]
            assert verify_labelled(deleted, out.manifest, signer.public_key()).status == "tampered", (i, deleted)
        assert verify_labelled(text + " ", out.manifest).status == "tampered"


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, obj


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return "x"
    return value[:-1] + ("A" if value[-1:] != "A" else "B") if value else "x"


def test_every_manifest_field_change_is_tampered(signer):
    out = label_text(CONTENT, PROV, signer)
    leaves = list(_leaves(out.manifest))
    assert len(leaves) >= 20
    for path, value in leaves:
        m = copy.deepcopy(out.manifest)
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = _changed(value)
        verdict = verify_labelled(str(out), m, signer.public_key())
        assert verdict.status == "tampered", (path, verdict)
    # Adding or removing a field is a change too.
    for mutate in (lambda m: m.update(extra=1), lambda m: m.pop("created"), lambda m: m["model"].pop("adapter_sha256")):
        m = copy.deepcopy(out.manifest)
        mutate(m)
        assert verify_labelled(str(out), m).status == "tampered"


def test_unsigned_and_missing_manifest(signer):
    out = label_text(CONTENT, PROV, signer)
    m = dict(out.manifest)
    del m["signature"]
    v = verify_labelled(str(out), m)
    assert v.status == "unsigned" and "signature" in v.reason
    assert verify_labelled(str(out), None).status == "unsigned"
    assert verify_labelled(str(out), ["not", "a", "dict"]).status == "tampered"


def test_expected_signer_and_resigned_forgery(signer):
    out = label_text(CONTENT, PROV, signer)
    assert verify_labelled(str(out), out.manifest, public_key=signer.public_key()).ok
    assert verify_labelled(str(out), out.manifest, public_key=out.manifest["signer"]["public_key"]).ok
    # Someone edits the content and re-signs with their own key: intact, but not the device's.
    forger = Ed25519PrivateKey.generate()
    forged = label_text(CONTENT + "!", PROV, forger)
    assert verify_labelled(str(forged), forged.manifest, public_key=forger.public_key()).ok
    v = verify_labelled(str(forged), forged.manifest, public_key=signer.public_key())
    assert v.status == "untrusted" and not v.ok and "expected key" in v.reason and v.key_id == key_id(forger.public_key())


def test_bare_content_verifies_when_label_is_rendered_apart(signer):
    out = label_text(CONTENT, PROV, signer)
    v = verify_labelled(out.content, out.manifest, signer.public_key())
    assert v.ok and "rendered separately" in v.reason


def test_json_round_trip_and_sidecar(signer, tmp_path):
    out = label_text(CONTENT, PROV, signer, LabelConfig(language="pt", placement="suffix"))
    data = json.loads(out.to_json())
    assert data["text"] == str(out) and data["content"] == CONTENT and data["label"] == "[Gerado por IA]"
    back = LabelledText.from_dict(data)
    assert str(back) == str(out) and verify_labelled(str(back), back.manifest, signer.public_key()).ok
    text_path, sidecar = out.save(tmp_path / "answer.txt")
    assert sidecar.name == "answer.txt.manifest.json"
    assert text_path.read_bytes().decode() == str(out)
    assert verify_labelled(text_path.read_text(encoding="utf-8"), json.loads(sidecar.read_text()), signer.public_key()).ok
    with pytest.raises(ManifestError):
        LabelledText.from_dict({"content": "x"})


def test_importing_provenance_does_not_import_torch():
    code = "import sys, personal.provenance; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
