"""A base model's identity and the registry of base loaders: the leaf that personal/models.py and
personal/slim/ both build on (so neither imports the other to load or describe a base).

- `BaseModel`: a frozen backbone, its tokenizer and its identity ``{"name", "sha256"}``.
- `file_sha256`, `state_sha256`: the hashes identities are made of; `cache_root`: where converted
  and slimmed checkpoints are cached.
- The loader registry: `register_loader(name, loader)` for a fixed name, `register_matcher(...)`
  for a family of names (a folder, ``BASE:STEPS``); `personal.models.load_base` asks `find_loader`.
  A loader gets a `LoadRequest`, whose `load` loads another base by name (a slimmed base needs its
  float source) without importing `personal.models`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ENCODER, CAUSAL = "encoder", "causal"
# The base a personalization, `suggest`, `serve` and the SDK use unless told otherwise (one source: tests/test_defaults.py).
DEFAULT_BASE = "minilm-l6"
# The causal base that answers chats for an encoder base (a causal base answers for itself).
CHAT_PARTNER = {"tiny": "tiny-causal", "tiny-encoder": "tiny-causal", "minilm-l6": "smollm2-135m"}


def chat_partner(name: str) -> str:
    """The base that answers chats when ``name`` is the owner's base."""
    return CHAT_PARTNER.get(name, name)


@dataclass
class BaseModel:
    """A frozen base: the backbone module, its tokenizer and its identity.

    ``model`` is the backbone without any task head (``BertModel`` for encoders,
    ``LlamaForCausalLM`` for causal bases, whose ``lm_head`` ``ask`` needs). Its parameters are
    frozen. ``wrapped`` caches LoRA-wrapped copies (see ``personal.training.wrap``) so that one
    process loads and wraps a base once and devices only swap adapter tensors.
    """

    name: str
    kind: str
    model: Any
    tokenizer: Any
    weights_sha256: str
    wrapped: dict = field(default_factory=dict, repr=False)

    def identity(self) -> dict[str, str]:
        """The identity recorded in every adapter: name and weights hash."""
        return {"name": self.name, "sha256": self.weights_sha256}

    @property
    def hidden_size(self) -> int:
        """Width of the backbone's hidden states (the head's input)."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return int(self.model.config.num_hidden_layers)


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where converted checkpoints live: ``cache_dir``, ``$HOMEBODY_CACHE`` or ``~/.cache/homebody``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HOMEBODY_CACHE"):
        return Path(os.environ["HOMEBODY_CACHE"]).expanduser()
    return Path.home() / ".cache" / "homebody"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: Any) -> str:
    """SHA-256 over a module's state dict (keys and raw tensor bytes, in key order)."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- loader registry
@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for: the name, the cache folder, the frozen weights' dtype, and a way
    to load another base by name (same cache and dtype rules as `personal.models.load_base`)."""

    name: str
    cache: Path
    dtype: str
    load: Callable[[str], BaseModel]


Loader = Callable[[LoadRequest], BaseModel]


@dataclass(frozen=True)
class Matcher:
    """A family of names one loader serves; matchers are tried in `rank` order after the fixed names."""

    label: str
    matches: Callable[[str], bool]
    loader: Loader
    rank: int


_NAMED: dict[str, Loader] = {}
_MATCHERS: dict[str, Matcher] = {}


def register_loader(name: str, loader: Loader) -> None:
    """Serve the fixed base name `name` with `loader` (registering a name again replaces its loader)."""
    _NAMED[name] = loader


def register_matcher(label: str, matches: Callable[[str], bool], loader: Loader, rank: int) -> None:
    """Serve every name `matches` accepts with `loader`; lower `rank` is tried first. `label`
    names the family in error messages and identifies the matcher (registering it again replaces it)."""
    _MATCHERS[label] = Matcher(label, matches, loader, rank)


def find_loader(name: str) -> Loader | None:
    """The loader for `name`: its fixed-name loader, else the first matcher (by rank) that accepts it."""
    if name in _NAMED:
        return _NAMED[name]
    for matcher in sorted(_MATCHERS.values(), key=lambda m: m.rank):
        if matcher.matches(name):
            return matcher.loader
    return None


def registered_names() -> tuple[str, ...]:
    """The fixed base names, in registration order."""
    return tuple(_NAMED)


def matcher_labels() -> tuple[str, ...]:
    """The families of names the matchers serve, in the order they are tried."""
    return tuple(m.label for m in sorted(_MATCHERS.values(), key=lambda m: m.rank))
