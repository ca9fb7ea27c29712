"""LabelledText: one generated output with its visible label and signed manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from personal.provenance.errors import ManifestError
from personal.provenance.labels import LabelConfig, apply_label
from personal.provenance.manifest import Provenance, build_manifest, load_manifest, sign_manifest

SIDECAR_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class LabelledText:
    """Generated text, its visible label and its signed manifest.

    `str(x)` is the labelled text (label included), so printing or concatenating never drops the
    label; `content` and `label` are separate for apps that render the label themselves.
    """

    content: str
    label: str
    manifest: dict[str, Any] = field(repr=False)
    config: LabelConfig = LabelConfig()

    @property
    def text(self) -> str:
        """The labelled text: content with the visible label where the config puts it."""
        return apply_label(self.content, self.config)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """Text, content, label and manifest as plain values (an API response body)."""
        return {"text": self.text, "content": self.content, "label": self.label, "manifest": self.manifest}

    def to_json(self) -> str:
        """`to_dict()` as JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelledText":
        """Rebuild from `to_dict()` output (the label settings come from the manifest)."""
        try:
            label = data["manifest"]["label"]
            config = LabelConfig(
                language=label["language"], placement=label["placement"], wording=label["text"], separator=label["separator"]
            )
            return cls(content=data["content"], label=data["label"], manifest=data["manifest"], config=config)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"not a labelled-text record: missing {exc}") from exc

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the labelled text to `path` and the manifest beside it (`path` + '.manifest.json')."""
        path = Path(path)
        sidecar = sidecar_path(path)
        path.write_text(self.text, encoding="utf-8", newline="")
        sidecar.write_text(json.dumps(self.manifest, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
        return path, sidecar


def sidecar_path(path: str | Path) -> Path:
    """Where the manifest of a text file lives by default."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The manifest stored at `path`, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return load_manifest(path.read_bytes())


def label_text(
    content: str,
    provenance: Provenance,
    signer,
    config: LabelConfig = LabelConfig(),
    *,
    watermark: dict[str, Any] | None = None,
    created: datetime | None = None,
    answer: dict[str, Any] | None = None,
) -> LabelledText:
    """Label a generated `content`: visible label + signed manifest.

    `watermark` is the manifest's watermark block (see `watermark.watermark_spec`); a provenance
    with a watermark key id but no block records just the key id. `answer` is a grounded answer's
    record (question understood, facts used, phrasing), signed inside the manifest.
    """
    if not isinstance(content, str):
        raise ManifestError(f"content must be text, got {type(content).__name__}")
    if watermark is None and provenance.watermark_key_id is not None:
        watermark = {"key_id": provenance.watermark_key_id}
    labelled = apply_label(content, config)
    body = build_manifest(content, labelled, config.to_dict(), provenance, watermark=watermark, created=created,
                          answer=answer)
    return LabelledText(content=content, label=config.label, manifest=sign_manifest(body, signer), config=config)
