"""The verifier: is a (text, manifest) pair intact and signed by a key we trust?

Statuses: `valid` (intact, signed by a trusted key), `untrusted` (intact, the signature holds, but
the signer is not a key the caller trusts: anyone can re-sign an edited text with their own key),
`tampered` (the text or manifest changed, or the manifest makes a claim homebody never signs) and
`unsigned`. Only `valid` is ok.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from personal.provenance.labels import strip_label
from personal.provenance.errors import ManifestError
from personal.provenance.manifest import (
    DIGITAL_SOURCE_TYPE,
    FORMAT,
    SIGNATURE_ALG,
    canonical_json,
    raw_public_key,
    sha256_text,
)

Status = Literal["valid", "untrusted", "tampered", "unsigned"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification, with a one-line reason.

    `key_id` names the key whose signature holds (None when no signature could be checked);
    `trusted` says whether that key is one the caller trusts (`public_key` / `trusted_keys`).
    """

    status: Status
    reason: str
    key_id: str | None = None
    trusted: bool = False

    @property
    def ok(self) -> bool:
        """True only for an intact pair signed by a trusted key."""
        return self.status == "valid" and self.trusted

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain values (the CLI's `--json`)."""
        return {"status": self.status, "reason": self.reason, "key_id": self.key_id, "trusted": self.trusted, "ok": self.ok}

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def _public_key_bytes(public_key: Any) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as a key object, raw bytes, hex or base64."""
    if isinstance(public_key, (bytes, bytearray)):
        raw = bytes(public_key)
    elif isinstance(public_key, str):
        text = public_key.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"public key is neither 64 hex digits nor base64: {exc}") from exc
    elif hasattr(public_key, "public_bytes"):
        raw = raw_public_key(public_key)
    else:
        raise TypeError(f"not a public key: {type(public_key).__name__}")
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return raw


def _check_signature(manifest: dict[str, Any]) -> Verdict | str:
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
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        public.verify(sig, canonical_json(body))
    except InvalidSignature:
        return Verdict("tampered", "manifest changed after signing (the signature does not verify)", kid)
    except Exception as exc:  # a manifest that cannot even be serialised was not produced by us
        return Verdict("tampered", f"manifest cannot be checked: {exc}", kid)
    return kid


def trusted_key_ids(public_key: Any = None, trusted_keys: Iterable[Any] = ()) -> set[str]:
    """Key ids (SHA-256 hex of the raw key) of every key given; a malformed key is a ManifestError."""
    keys = ([] if public_key is None else [public_key]) + list(trusted_keys)
    ids = set()
    for key in keys:
        try:
            ids.add(hashlib.sha256(_public_key_bytes(key)).hexdigest())
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"trusted public key: {exc}") from exc
    return ids


def verify_labelled(
    text: str, manifest: dict[str, Any] | None, public_key: Any = None, *, trusted_keys: Iterable[Any] = ()
) -> Verdict:
    """Check a labelled (or bare) text against its manifest, and its signer against the trusted keys.

    `public_key` and `trusted_keys` (Ed25519 public keys, raw bytes, hex or base64) are the keys
    the caller trusts, typically the device's (`vault.public_key()`); with none, an intact pair is
    at best `untrusted`. A manifest that does not say `ai_generated: true` with homebody's digital
    source type is `tampered`: homebody only ever signs AI-generated outputs, so a signed claim
    of human authorship is not one of ours, whoever signed it.
    """
    if manifest is None:
        return Verdict("unsigned", "no manifest was found for this text")
    if not isinstance(manifest, dict):
        return Verdict("tampered", "the manifest is not a JSON object")
    trusted_ids = trusted_key_ids(public_key, trusted_keys)
    checked = _check_signature(manifest)
    if isinstance(checked, Verdict):
        return checked
    kid = checked
    problem = _content_problem(text, manifest)
    if problem is not None:
        return Verdict("tampered", problem, kid)
    how = "text and manifest intact" if sha256_text(text) == _block(manifest, "content").get("labelled_sha256") else (
        "content intact (visible label rendered separately)"
    )
    if kid not in trusted_ids:
        expected = f" (expected key {', '.join(sorted(k[:16] + '…' for k in trusted_ids))})" if trusted_ids else ""
        return Verdict("untrusted", f"{how}, but a valid signature by an unknown key {kid[:16]}…{expected}", kid)
    return Verdict("valid", f"{how}, signed by trusted key {kid[:16]}…", kid, trusted=True)


def _content_problem(text: str, manifest: dict[str, Any]) -> str | None:
    """Why a correctly signed manifest does not vouch for `text` as homebody output, or None."""
    if manifest.get("format") != FORMAT:
        return f"unknown manifest format {manifest.get('format')!r}"
    if manifest.get("ai_generated") is not True or manifest.get("digital_source_type") != DIGITAL_SOURCE_TYPE:
        return "the manifest does not declare the text AI-generated: homebody signs only AI-generated outputs"
    content = _block(manifest, "content")
    if sha256_text(text) in (content.get("labelled_sha256"), content.get("sha256")):
        return None
    label = _block(manifest, "label")
    inner = strip_label(text, str(label.get("text", "")), str(label.get("placement", "")), str(label.get("separator", "")))
    if inner is None:
        return "the text changed: its visible label is missing or altered and its hash does not match"
    return "the content changed: its SHA-256 does not match the manifest"


def _block(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """A manifest's sub-object, or {} when it is missing or not an object (a forger signs anything)."""
    value = manifest.get(name)
    return value if isinstance(value, dict) else {}
