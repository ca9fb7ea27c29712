"""The slim folder's manifest (``slim.json``): what was done, with what, and the weights' hash.

A slim folder holds ``config.json`` (the architecture after pruning), the tokenizer files,
``model.safetensors`` (int8 / 4-bit codes and their scales next to the float tensors left as
they were) and this manifest. ``layout`` tells the loader which modules are quantized and how,
so that it can rebuild the structure before loading the weights; ``weights_sha256`` is checked
on every load and becomes the base identity adapters record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from privacy.errors import HomebodyError

MANIFEST = "slim.json"
WEIGHTS = "model.safetensors"
FORMAT = "homebody-slim/1"


class SlimError(HomebodyError):
    """A slim folder is missing, damaged or does not match its manifest; or slimming cannot run."""


@dataclass
class SlimManifest:
    """Everything needed to rebuild and trust a slimmed base.

    ``source``: identity (name, sha256) of the base that was slimmed; ``model_class`` and
    ``init_kwargs``: the transformers class to build from ``config.json``; ``steps``: the
    slimming steps in order, each ``{"step": "prune" | "distil" | "quantize", ...parameters,
    ...measurements}``; ``layout``: quantized module name -> kind; ``aliases``: tensors stored
    once and shared (e.g. a tied LM head in float).
    """

    source: dict[str, str]
    kind: str
    model_class: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    layout: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS
    weights_sha256: str = ""
    weights_bytes: int = 0
    parameters: int = 0
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT

    def step_names(self) -> list[str]:
        """E.g. ``["prune", "quantize"]``."""
        return [s["step"] for s in self.steps]

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "slim.json") -> "SlimManifest":
        """Parse, raising ``SlimError`` with the reason on anything malformed."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SlimError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SlimError(f"{where} is not a {FORMAT} manifest (format={data.get('format') if isinstance(data, dict) else None!r})")
        known = set(cls.__dataclass_fields__)
        missing = {"source", "kind", "model_class"} - set(data)
        if missing:
            raise SlimError(f"{where} lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, folder: Path) -> Path:
        """Write ``folder/slim.json``."""
        path = Path(folder) / MANIFEST
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> "SlimManifest":
        """Read ``folder/slim.json``."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise SlimError(f"{folder} is not a slim folder (no {MANIFEST})")
        return cls.from_json(path.read_text(), str(path))


def is_slim_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``homebody slim``."""
    return (Path(path).expanduser() / MANIFEST).is_file()
