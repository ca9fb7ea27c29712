"""Provenance: every AI-generated output carries a visible label, a signed manifest and a watermark.

    from personal.provenance import LabelConfig, Provenance, generate_labelled, verify_labelled, detect_watermark

Three layers (issue 7): `labels` (explicit, en/zh/pt), `manifest` (C2PA-spirit canonical JSON
signed with the device's Ed25519 key), `watermark` (keyed Kirchenbauer green list from
transformers, detectable with the tokenizer and key alone). `generate` is the one entry point
every generation path uses; `verify` checks a text against its manifest. Torch and transformers
are imported only inside the functions that need them.
"""

from personal.provenance.errors import LabelError, ManifestError, ProvenanceError, WatermarkError
from personal.provenance.generate import generate_labelled, generate_labelled_batch, provenance_for
from personal.provenance.labelled import LabelledText, label_text, read_sidecar, sidecar_path
from personal.provenance.labels import DEFAULT_WORDING, LabelConfig, apply_label, strip_any_label
from personal.provenance.manifest import Provenance, canonical_json, key_id, sha256_text
from personal.provenance.verify import Verdict, verify_labelled
from personal.provenance.watermark import (
    Detection,
    WatermarkSettings,
    derive_watermark_key,
    detect_watermark,
    new_watermark_key,
    watermark_key_id,
)

__all__ = [
    "DEFAULT_WORDING",
    "Detection",
    "LabelConfig",
    "LabelError",
    "LabelledText",
    "ManifestError",
    "Provenance",
    "ProvenanceError",
    "Verdict",
    "WatermarkError",
    "WatermarkSettings",
    "apply_label",
    "canonical_json",
    "derive_watermark_key",
    "detect_watermark",
    "generate_labelled",
    "generate_labelled_batch",
    "key_id",
    "label_text",
    "new_watermark_key",
    "provenance_for",
    "read_sidecar",
    "sha256_text",
    "sidecar_path",
    "strip_any_label",
    "verify_labelled",
    "watermark_key_id",
]
