"""The verifier: is a (text, manifest) pair intact, tampered with, or unsigned?"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from personal.provenance.labels import strip_label
from personal.provenance.manifest import FORMAT, SIGNATURE_ALG, canonical_json, raw_public_key, sha256_text

Status = Literal["valid", "tampered", "unsigned"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification, with a one-line reason."""

    status: Status
    reason: str
    key_id: str | None = None

    @property
    def ok(self) -> bool:
        """True only for an intact, signed pair."""
        return self.status == "valid"

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def _public_key_bytes(public_key: Any) -> bytes:
    if isinstance(public_key, (bytes, bytearray)):
        return bytes(public_key)
    if isinstance(public_key, str):
        text = public_key.strip()
        try:
            return bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"public key is neither 64 hex digits nor base64: {exc}") from exc
    return raw_public_key(public_key)


def _check_signature(manifest: dict[str, Any], expected_key: Any) -> Verdict | str:
    """A tampered/unsigned Verdict, or the signer's key id when the signature holds."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    signature = manifest.get("signature")
    if signature in (None, ""):
        return Verdict("unsigned", "the manifest carries no signature")
    signer = manifest.get("signer")
    if not isinstance(signer, dict) or signer.get("alg") != SIGNATURE_ALG:
        return Verdict("tampered", "manifest signer block is missing or not Ed25519")
    try:
        raw = base64.b64decode(signer.get("public_key", ""), validate=True)
        sig = base64.b64decode(signature, validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, binascii.Error):
        return Verdict("tampered", "manifest public key or signature is not well-formed")
    kid = hashlib.sha256(raw).hexdigest()
    if signer.get("key_id") != kid:
        return Verdict("tampered", "manifest key id does not match its public key")
    if expected_key is not None:
        try:
            expected = _public_key_bytes(expected_key)
        except ValueError as exc:
            return Verdict("tampered", str(exc))
        if expected != raw:
            return Verdict("tampered", f"signed by key {kid[:16]}…, not by the expected key {hashlib.sha256(expected).hexdigest()[:16]}…")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        public.verify(sig, canonical_json(body))
    except InvalidSignature:
        return Verdict("tampered", "manifest changed after signing (the signature does not verify)", kid)
    except Exception as exc:  # a manifest that cannot even be serialised was not produced by us
        return Verdict("tampered", f"manifest cannot be checked: {exc}", kid)
    return kid


def verify_labelled(text: str, manifest: dict[str, Any] | None, public_key: Any = None) -> Verdict:
    """Check a labelled (or bare) text against its manifest.

    valid: the signature holds and the text is exactly the labelled output (or exactly its content,
    when an app rendered the label separately). tampered: the manifest or the text changed, or the
    signer is not `public_key`. unsigned: no manifest, or one without a signature.
    """
    if manifest is None:
        return Verdict("unsigned", "no manifest was found for this text")
    if not isinstance(manifest, dict):
        return Verdict("tampered", "the manifest is not a JSON object")
    checked = _check_signature(manifest, public_key)
    if isinstance(checked, Verdict):
        return checked
    kid = checked
    if manifest.get("format") != FORMAT:
        return Verdict("tampered", f"unknown manifest format {manifest.get('format')!r}", kid)
    content = manifest.get("content") or {}
    if sha256_text(text) == content.get("labelled_sha256"):
        return Verdict("valid", f"text and manifest intact, signed by key {kid[:16]}…", kid)
    if sha256_text(text) == content.get("sha256"):
        return Verdict("valid", f"content intact (visible label rendered separately), signed by key {kid[:16]}…", kid)
    label = manifest.get("label") or {}
    inner = strip_label(text, str(label.get("text", "")), str(label.get("placement", "")), str(label.get("separator", "")))
    if inner is None:
        return Verdict("tampered", "the text changed: its visible label is missing or altered and its hash does not match", kid)
    return Verdict("tampered", "the content changed: its SHA-256 does not match the manifest", kid)
