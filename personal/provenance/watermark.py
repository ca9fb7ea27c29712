"""The statistical layer: a keyed green-list watermark in the generated tokens.

This uses the watermark transformers ships (Kirchenbauer et al. 2023: `WatermarkingConfig` for
generation, `WatermarkDetector` for detection). We picked it over SynthID Text because its
detector needs only the tokenizer and the key, while SynthID's needs a Bayesian detector trained
on the model's own outputs. The seeding key comes from a per-device (or per-deployment) secret:
`derive_watermark_key(signing_key)` gives each device its own without storing anything new.

The detector counts each distinct (previous token, token) pair once (`ignore_repeated_ngrams`):
repeated phrases in human text are not independent draws, and counting them inflates the z-score
and so the false-positive rate.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from personal.provenance.errors import WatermarkError

METHOD = "kirchenbauer-2023"
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class WatermarkSettings:
    """Generation and detection settings; detection must use the same ones as generation."""

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    seeding_scheme: str = "lefthash"
    context_width: int = 1
    z_threshold: float = 4.0
    min_tokens: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.greenlist_ratio < 1.0:
            raise WatermarkError(f"greenlist_ratio must be in (0, 1), got {self.greenlist_ratio}")
        if self.seeding_scheme not in ("lefthash", "selfhash"):
            raise WatermarkError(f"seeding_scheme must be 'lefthash' or 'selfhash', got {self.seeding_scheme!r}")
        if self.context_width < 1 or self.bias < 0:
            raise WatermarkError("context_width must be >= 1 and bias >= 0")


@dataclass(frozen=True)
class Detection:
    """A watermark test: z-score, one-sided p-value and verdict."""

    score: float
    p_value: float
    verdict: Literal["watermarked", "not watermarked", "too short"]
    tokens_scored: int
    green_fraction: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON output)."""
        return asdict(self)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise WatermarkError(f"a watermark key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def new_watermark_key() -> bytes:
    """A fresh random 32-byte key (per deployment)."""
    import os

    return os.urandom(32)


def derive_watermark_key(signer) -> bytes:
    """A per-device watermark key derived (HKDF-SHA256) from the device's Ed25519 private key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = signer.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"homebody watermark key v1").derive(raw)


def watermark_key_id(key: bytes) -> str:
    """A public id for a key (it reveals nothing about the key): 32 hex digits."""
    return hashlib.sha256(b"homebody watermark key id\x00" + _check_key(key)).hexdigest()[:32]


def hashing_key(key: bytes) -> int:
    """The integer seed transformers' green-list processor takes, derived from the key (63 bits, never 0)."""
    digest = hmac.new(_check_key(key), b"kirchenbauer hashing key", hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") & (2**63 - 1)) or 1


def watermarking_config(key: bytes, settings: WatermarkSettings = WatermarkSettings()):
    """transformers' `WatermarkingConfig` for this key, to pass to `model.generate`."""
    from transformers import WatermarkingConfig

    return WatermarkingConfig(
        greenlist_ratio=settings.greenlist_ratio,
        bias=settings.bias,
        hashing_key=hashing_key(key),
        seeding_scheme=settings.seeding_scheme,
        context_width=settings.context_width,
    )


def watermark_spec(key: bytes, settings: WatermarkSettings, vocab_size: int) -> dict[str, Any]:
    """What a manifest records about the watermark (never the key itself)."""
    return {
        "method": METHOD,
        "implementation": "transformers.WatermarkingConfig",
        "key_id": watermark_key_id(key),
        "greenlist_ratio": settings.greenlist_ratio,
        "bias": settings.bias,
        "seeding_scheme": settings.seeding_scheme,
        "context_width": settings.context_width,
        "vocab_size": int(vocab_size),
    }


def settings_from_spec(spec: dict[str, Any] | None, base: WatermarkSettings = WatermarkSettings()) -> WatermarkSettings:
    """The settings a manifest's watermark block records (falling back to `base`)."""
    if not spec:
        return base
    return WatermarkSettings(
        greenlist_ratio=float(spec.get("greenlist_ratio", base.greenlist_ratio)),
        bias=float(spec.get("bias", base.bias)),
        seeding_scheme=str(spec.get("seeding_scheme", base.seeding_scheme)),
        context_width=int(spec.get("context_width", base.context_width)),
        z_threshold=base.z_threshold,
        min_tokens=base.min_tokens,
    )


@dataclass(frozen=True)
class _DetectorModelConfig:
    # The three fields WatermarkDetector reads from a model config: the tokenizer supplies them.
    vocab_size: int
    bos_token_id: int | None
    is_encoder_decoder: bool = False


def detect_watermark(
    text: str,
    tokenizer,
    key: bytes,
    *,
    settings: WatermarkSettings = WatermarkSettings(),
    vocab_size: int | None = None,
) -> Detection:
    """Score `text` (the generated content, without prompt or label) for this key's watermark.

    `vocab_size` must be the generating model's (a manifest records it); default `len(tokenizer)`.
    """
    import torch
    from transformers import WatermarkDetector

    config = watermarking_config(key, settings)
    vocab = int(vocab_size or len(tokenizer))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pairs = max(len(ids) - settings.context_width, 0)
    if pairs < 1:
        return Detection(0.0, 1.0, "too short", 0, 0.0, settings.z_threshold)
    detector = WatermarkDetector(
        model_config=_DetectorModelConfig(vocab, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1),
        device="cpu",
        watermarking_config=config.to_dict(),
        ignore_repeated_ngrams=True,
    )
    out = detector(torch.tensor([ids], dtype=torch.long), z_threshold=settings.z_threshold, return_dict=True)
    scored = int(out.num_tokens_scored[0])
    z = float(out.z_score[0])
    p = float(out.p_value[0])
    if not math.isfinite(z):
        z, p = 0.0, 1.0
    if scored < settings.min_tokens:
        verdict = "too short"
    else:
        verdict = "watermarked" if z > settings.z_threshold else "not watermarked"
    return Detection(z, p, verdict, scored, float(out.green_fraction[0]), settings.z_threshold)
