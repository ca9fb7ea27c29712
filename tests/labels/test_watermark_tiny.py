"""The watermark on a tiny random causal LM: detected with the tokenizer and key alone, not without the key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from personal.provenance import (
    ProvenanceError,
    WatermarkError,
    WatermarkSettings,
    derive_watermark_key,
    detect_watermark,
    generate_labelled,
    new_watermark_key,
    verify_labelled,
    watermark_key_id,
)


def test_watermarked_text_is_detected_with_tokenizer_and_key(generations, tiny_causal):
    key, marked, _ = generations
    for out in marked:
        assert out.content and str(out).startswith("[AI-generated] ")
        d = detect_watermark(out.content, tiny_causal.tokenizer, key)
        assert d.verdict == "watermarked", d
        assert d.score > 4.0 and d.p_value < 1e-4 and d.tokens_scored >= 40


def test_no_detection_without_the_key_or_without_the_watermark(generations, tiny_causal):
    key, marked, plain = generations
    other = new_watermark_key()
    for out in marked:
        assert detect_watermark(out.content, tiny_causal.tokenizer, other).verdict == "not watermarked"
    d = detect_watermark(plain.content, tiny_causal.tokenizer, key)
    assert d.verdict == "not watermarked" and d.p_value > 1e-3


def test_manifest_records_watermark_without_the_key(generations, tiny_causal, signer):
    key, marked, plain = generations
    wm = marked[0].manifest["watermark"]
    assert wm["key_id"] == watermark_key_id(key)
    assert wm["method"] == "kirchenbauer-2023" and wm["vocab_size"] == tiny_causal.model.config.vocab_size
    assert key.hex() not in marked[0].to_json()
    assert plain.manifest["watermark"] is None
    for out in (*marked, plain):
        assert verify_labelled(str(out), out.manifest, public_key=signer.public_key()).ok


def test_device_keys_are_derived_per_device(signer):
    assert derive_watermark_key(signer) == derive_watermark_key(signer)
    assert derive_watermark_key(signer) != derive_watermark_key(Ed25519PrivateKey.generate())
    assert len(watermark_key_id(derive_watermark_key(signer))) == 32


def test_short_text_and_bad_keys(tiny_causal):
    key = new_watermark_key()
    assert detect_watermark("hello", tiny_causal.tokenizer, key).verdict == "too short"
    assert detect_watermark("", tiny_causal.tokenizer, key).verdict == "too short"
    with pytest.raises(WatermarkError):
        detect_watermark("hello there", tiny_causal.tokenizer, b"short")
    with pytest.raises(WatermarkError):
        WatermarkSettings(greenlist_ratio=1.5)


def test_generation_refuses_bad_requests(tiny_causal, provenance, signer):
    from dataclasses import replace

    key = new_watermark_key()
    args = (tiny_causal.model, tiny_causal.tokenizer)
    # Every refusal happens before generation starts, so nothing here runs the model.
    with pytest.raises(WatermarkError):
        generate_labelled(*args, "hi", replace(provenance, watermark_key_id="0" * 32), signer, watermark_key=key, max_new_tokens=2)
    with pytest.raises(ProvenanceError):
        generate_labelled(*args, [], provenance, signer, watermark_key=key, max_new_tokens=2)
    with pytest.raises(ProvenanceError):
        generate_labelled(*args, [{"role": "user"}], provenance, signer, watermark_key=key, max_new_tokens=2)
    with pytest.raises(ProvenanceError):
        generate_labelled(*args, 42, provenance, signer, watermark_key=key, max_new_tokens=2)
    with pytest.raises(ProvenanceError):
        generate_labelled(*args, "hi", provenance, signer, watermark_key=key, max_new_tokens=2, logits_processor=[])
