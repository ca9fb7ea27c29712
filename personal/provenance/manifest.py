"""The implicit layer: a manifest in the spirit of C2PA content credentials.

A manifest records who generated a text and from what (generator, base model and its weights
hash, adapter hash, creation time, SHA-256 of the content, watermark key id). It is serialised
as canonical JSON (sorted keys, no whitespace, UTF-8) and signed with the device's Ed25519 key.
The signer's public key travels inside the signed body, so anyone can check integrity without
the vault; checking *who* signed needs the expected public key (`verify_labelled(public_key=...)`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from personal.provenance.errors import ManifestError

FORMAT = "homebody.provenance/1"
# IPTC digital source type for content created by a trained model, as C2PA uses it.
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SIGNATURE_ALG = "Ed25519"


@dataclass(frozen=True)
class Provenance:
    """What produced a text: the generator and the model (base weights hash, adapter hash, watermark key id)."""

    generator: str
    generator_version: str
    base_model: str
    base_sha256: str
    adapter_sha256: str | None = None
    watermark_key_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("generator", "generator_version", "base_model", "base_sha256"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ManifestError(f"provenance field {name!r} must be a non-empty string")
        for name in ("base_sha256", "adapter_sha256"):
            value = getattr(self, name)
            if value is not None and not _is_hex(value, 64):
                raise ManifestError(f"provenance field {name!r} must be a SHA-256 hex digest, got {value!r}")


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def canonical_json(obj: Any) -> bytes:
    """Deterministic bytes of a JSON value: sorted keys, no whitespace, UTF-8, no NaN."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is not plain JSON: {exc}") from exc


def sha256_text(text: str) -> str:
    """SHA-256 hex digest of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def raw_public_key(public_key) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """The key id of an Ed25519 public key: SHA-256 hex of its raw bytes."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()


def build_manifest(
    content: str,
    labelled: str,
    label: dict[str, str],
    provenance: Provenance,
    *,
    watermark: dict[str, Any] | None = None,
    created: datetime | None = None,
    answer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The unsigned manifest body for one generated text.

    ``answer`` (grounded answers, personal/answers.py) records how the text was made: the habit
    question understood, the facts it used and whether a template or the model phrased it. It is
    signed with the rest; manifests without one are unchanged.
    """
    created = created or datetime.now(timezone.utc)
    body = {
        "format": FORMAT,
        "ai_generated": True,
        "digital_source_type": DIGITAL_SOURCE_TYPE,
        "created": created.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "generator": {"name": provenance.generator, "version": provenance.generator_version},
        "model": {
            "base": provenance.base_model,
            "base_sha256": provenance.base_sha256,
            "adapter_sha256": provenance.adapter_sha256,
        },
        "content": {
            "media_type": "text/plain; charset=utf-8",
            "sha256": sha256_text(content),
            "labelled_sha256": sha256_text(labelled),
        },
        "label": dict(label),
        "watermark": watermark,
    }
    if answer is not None:
        body["answer"] = answer
    return body


def sign_manifest(body: dict[str, Any], signer) -> dict[str, Any]:
    """`body` plus the signer's public key and an Ed25519 signature over its canonical JSON."""
    public = signer.public_key()
    signed = dict(body)
    signed["signer"] = {
        "alg": SIGNATURE_ALG,
        "public_key": base64.b64encode(raw_public_key(public)).decode(),
        "key_id": key_id(public),
    }
    signed.pop("signature", None)
    signature = signer.sign(canonical_json(signed))
    signed["signature"] = base64.b64encode(signature).decode()
    return signed


def load_manifest(data: str | bytes) -> dict[str, Any]:
    """Parse a manifest's JSON text; a non-object or unreadable text is a ManifestError."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ManifestError("manifest is not a JSON object")
    return value


def provenance_dict(provenance: Provenance) -> dict[str, Any]:
    """The provenance as a plain dict (for APIs and logs)."""
    return asdict(provenance)
