"""Write and read slim folders (see ``manifest.py`` for what one holds).

Loading builds the architecture on the ``meta`` device (no float copy of the weights is ever
allocated; PyTorch's thread-local ``torch.device`` context, so other threads are unaffected),
swaps in quantized shells per the manifest's layout, assigns the stored tensors, then recomputes
the buffers the file does not hold: peak memory stays near the size of the slim weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from personal.base_identity import BaseModel, LoadRequest, file_sha256, register_matcher
from personal.slim.manifest import WEIGHTS, SlimError, SlimManifest, is_slim_folder
from personal.slim.quantize import finish_loaded, skeleton_from_layout


def _dedupe(state: dict[str, torch.Tensor], skip_prefixes: tuple[str, ...]) -> tuple[dict, dict[str, str]]:
    """Drop tensors that share storage with an earlier one; return (state, aliases dropped -> kept)."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for key, t in state.items():
        if key.startswith(skip_prefixes):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        out[key] = t.detach().contiguous()
    return out, aliases


def save_slim(model: nn.Module, tokenizer: Any, manifest: SlimManifest, out: Path) -> SlimManifest:
    """Write ``model`` as a slim folder at ``out`` (atomically: a temp folder renamed into place).

    Fills ``manifest``'s weights hash, size, parameter count and aliases, and returns it.
    """
    import safetensors.torch
    import transformers

    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not is_slim_folder(out):
        raise SlimError(f"{out} exists and is not a slim folder: refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tied = tuple(n + "." for n, k in manifest.layout.items() if k.startswith("tied:"))
    state, aliases = _dedupe(model.state_dict(), tied)
    tmp = Path(tempfile.mkdtemp(prefix=".slim-", dir=out.parent))
    try:
        safetensors.torch.save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest.aliases = aliases
        manifest.weights_file = WEIGHTS
        manifest.weights_sha256 = file_sha256(tmp / WEIGHTS)
        manifest.weights_bytes = (tmp / WEIGHTS).stat().st_size
        manifest.parameters = sum(t.numel() for t in state.values())
        manifest.versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        manifest.write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build(manifest: SlimManifest, folder: Path) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    cls = getattr(transformers, manifest.model_class, None)
    if cls is None:
        raise SlimError(f"{folder}: unknown model class {manifest.model_class!r} in the manifest")
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # this thread's factory calls only: a head made meanwhile elsewhere stays real
        return cls(config, **manifest.init_kwargs)


def _materialise_buffers(model: nn.Module, folder: Path) -> None:
    """Recompute the buffers the weights file does not hold (position ids, rotary tables), built on
    meta with the skeleton: real placeholders, then the model's own initialiser for each owner
    module (as transformers' ``from_pretrained`` does). Loaded parameters are marked initialised
    first, so the initialiser leaves them alone."""
    owners: dict[int, nn.Module] = {}
    for name, buf in list(model.named_buffers()):
        if buf.device.type == "meta":
            module_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(module_name)
            owner._buffers[attr] = torch.empty_like(buf, device="cpu")  # keeps its persistent flag
            owners[id(owner)] = owner
    if owners and not hasattr(model, "_init_weights"):
        raise SlimError(f"{folder}: {type(model).__name__} has buffers to recompute but no initialiser")
    for owner in owners.values():
        for p in owner.parameters(recurse=False):
            p._is_hf_initialized = True
        model._init_weights(owner)


def load_slim_model(folder: str | Path, verify: bool = True) -> tuple[nn.Module, SlimManifest]:
    """The slimmed module (frozen, eval mode) and its manifest; checks the weights hash."""
    import safetensors.torch

    folder = Path(folder).expanduser()
    manifest = SlimManifest.read(folder)
    weights = folder / manifest.weights_file
    if not weights.is_file():
        raise SlimError(f"{folder}: weights file {manifest.weights_file} is missing")
    if verify and file_sha256(weights) != manifest.weights_sha256:
        raise SlimError(f"{weights}: SHA-256 does not match the manifest (file changed or damaged)")
    model = _build(manifest, folder)
    skeleton_from_layout(model, manifest.layout)
    state = safetensors.torch.load_file(str(weights))
    tied = tuple(n + "." for n, k in manifest.layout.items() if k.startswith("tied:"))
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in manifest.aliases and not k.startswith(tied)]
    if missing or result.unexpected_keys:
        raise SlimError(f"{folder}: weights do not fit the architecture (missing {missing[:3]}, "
                        f"unexpected {result.unexpected_keys[:3]})")
    for key, kept in manifest.aliases.items():
        mod_name, _, attr = key.rpartition(".")
        setattr(model.get_submodule(mod_name), attr, model.get_parameter(kept))
    finish_loaded(model, manifest.layout)
    _materialise_buffers(model, folder)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise SlimError(f"{folder}: tensors never loaded: {leftover[:3]}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    del state
    _release_freed_memory()
    return model, manifest


def _release_freed_memory() -> None:
    """Hand the loader's freed temporaries back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_slim(folder: str | Path, name: str | None = None) -> BaseModel:
    """A slim folder as a ``BaseModel``; its identity's hash is the manifest's weights hash."""
    from transformers import AutoTokenizer

    folder = Path(folder).expanduser()
    model, manifest = load_slim_model(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return BaseModel(name or str(folder.resolve()), manifest.kind, model, tok, manifest.weights_sha256)


def _load_request(request: LoadRequest) -> BaseModel:
    return load_slim(Path(request.name).expanduser())


# A slim folder is a model folder too: this loader must be tried before the plain folder loader (rank 20).
register_matcher("slim folder", is_slim_folder, _load_request, rank=10)
