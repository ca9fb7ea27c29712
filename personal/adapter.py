"""An adapter: the personal part of a model as plain arrays, with the identity of its base.

``tensors`` hold the LoRA matrices (keys as in the wrapped backbone's state dict, e.g.
``encoder.layer.5.attention.self.query.lora_A.weight``) and the prediction head (``head.weight``,
``head.bias``). ``labels`` is the head's label space in row order. The bytes are a safetensors
file whose metadata carries the base identity, labels, LoRA settings and free-form ``meta``, so
one blob is everything needed to check and load it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from privacy.errors import HomebodyError

FORMAT = "homebody-adapter/1"


class AdapterError(HomebodyError):
    """Adapter bytes are damaged or not a homebody adapter."""


class AdapterMismatch(AdapterError):
    """An adapter was made for another base model (or other LoRA settings) than the one given."""


_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
           np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int8"): "I8", np.dtype("uint8"): "U8"}


def _safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file with sorted keys, so equal adapters give equal bytes (and hashes).

    (safetensors' own writer orders the metadata nondeterministically.)
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _DTYPES:
            raise AdapterError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


@dataclass(frozen=True)
class LoraSettings:
    """Where LoRA goes and how big it is.

    ``targets``: module names (e.g. ``("query", "value")`` for BERT, ``("q_proj", "v_proj")`` for
    Llama) or ``None`` for the architecture's default. ``layers``: layer indices to adapt, or ``None``
    for all; negative indices count from the top (``(-1,)`` = the last layer only), which lets the
    frozen lower layers' outputs be computed once and cached.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """Absolute, sorted layer indices."""
        if self.layers is None:
            return tuple(range(num_layers))
        if any(i >= num_layers or i < -num_layers for i in self.layers):
            raise HomebodyError(f"LoRA layers {self.layers} out of range for a {num_layers}-layer model")
        return tuple(sorted({i % num_layers for i in self.layers}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = asdict(self)
        d["targets"] = list(self.targets) if self.targets is not None else None
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraSettings":
        """Inverse of ``to_dict``."""
        return cls(r=int(d["r"]), alpha=int(d["alpha"]), dropout=float(d["dropout"]),
                   targets=tuple(d["targets"]) if d.get("targets") is not None else None,
                   layers=tuple(d["layers"]) if d.get("layers") is not None else None)


@dataclass
class Adapter:
    """LoRA + head tensors (numpy), the base identity they belong to, and the label space."""

    base_identity: dict[str, str]
    labels: list[str]
    tensors: dict[str, np.ndarray]
    lora: LoraSettings = field(default_factory=LoraSettings)
    meta: dict[str, Any] = field(default_factory=dict)

    def check_base(self, identity: dict[str, str]) -> None:
        """Raise ``AdapterMismatch`` unless ``identity`` is the base this adapter was trained on."""
        mine, theirs = self.base_identity, identity
        if mine.get("name") != theirs.get("name") or mine.get("sha256") != theirs.get("sha256"):
            raise AdapterMismatch(
                f"adapter was trained on base {mine.get('name')!r} (sha256 {str(mine.get('sha256'))[:12]}…), "
                f"not on {theirs.get('name')!r} (sha256 {str(theirs.get('sha256'))[:12]}…); "
                "personalize again with this base"
            )

    def to_bytes(self) -> bytes:
        """A safetensors blob with the identity, labels, LoRA settings and meta in its header."""
        header = {"format": FORMAT, "base_identity": json.dumps(self.base_identity),
                  "labels": json.dumps(self.labels), "lora": json.dumps(self.lora.to_dict()),
                  "meta": json.dumps(self.meta, sort_keys=True, default=str)}
        return _safetensors_bytes(self.tensors, header)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Adapter":
        """Parse ``to_bytes`` output; raise ``AdapterError`` on anything else."""
        from safetensors.numpy import load

        try:
            (n,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + n])["__metadata__"]
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            tensors = load(data)
            return cls(base_identity=json.loads(header["base_identity"]), labels=json.loads(header["labels"]),
                       tensors=tensors, lora=LoraSettings.from_dict(json.loads(header["lora"])),
                       meta=json.loads(header["meta"]))
        except Exception as exc:  # any parse failure of foreign bytes is one typed error
            if isinstance(exc, HomebodyError):
                raise
            raise AdapterError(f"not a homebody adapter ({type(exc).__name__}: {exc})") from exc

    def sha256(self) -> str:
        """SHA-256 of ``to_bytes()`` (what the ledger records for the release)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def num_parameters(self) -> int:
        """Total number of scalars in the tensors."""
        return int(sum(v.size for v in self.tensors.values()))

    def nbytes(self) -> int:
        """Size of the serialised adapter."""
        return len(self.to_bytes())
