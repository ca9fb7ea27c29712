"""The ONE labelled-generation entry point: every generation path in homebody goes through here.

`generate_labelled` runs `model.generate` with the keyed watermark, decodes the new tokens and
returns a `LabelledText` (visible label + signed manifest). `generate_labelled_batch` does the
same for several prompts at once (left padding), which is much faster on CPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from personal.provenance.errors import ProvenanceError, WatermarkError
from personal.provenance.labelled import LabelledText, label_text
from personal.provenance.labels import LabelConfig
from personal.provenance.manifest import Provenance
from personal.provenance.watermark import WatermarkSettings, watermark_key_id, watermark_spec, watermarking_config

Prompt = str | list[dict[str, str]]


def _prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a plain prompt, or of a chat (list of {role, content}) through the chat template."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            # Template-free tokenizers (the tiny test bases) get a plain "Role: text" transcript.
            lines = [f"{str(m['role']).capitalize()}: {m['content']}" for m in prompt]
            return list(tokenizer("\n".join(lines) + "\nAssistant:")["input_ids"])
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ProvenanceError("a prompt is a string or a list of {'role', 'content'} messages")


def _pad_id(tokenizer, model) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def _stop_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def _watermarked_provenance(provenance: Provenance, key: bytes | None) -> Provenance:
    if key is None:
        return provenance
    kid = watermark_key_id(key)
    if provenance.watermark_key_id not in (None, kid):
        raise WatermarkError(f"provenance names watermark key {provenance.watermark_key_id}, but the key given is {kid}")
    return replace(provenance, watermark_key_id=kid)


def generate_labelled_batch(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    provenance: Provenance,
    signer,
    *,
    watermark_key: bytes | None,
    max_new_tokens: int = 128,
    config: LabelConfig = LabelConfig(),
    settings: WatermarkSettings = WatermarkSettings(),
    **generate_kwargs: Any,
) -> list[LabelledText]:
    """Generate one labelled answer per prompt (batched, left-padded); see `generate_labelled`."""
    import torch

    if "watermarking_config" in generate_kwargs or "logits_processor" in generate_kwargs:
        raise ProvenanceError("the watermark is set by watermark_key; do not pass watermarking_config/logits_processor")
    if not prompts:
        return []
    provenance = _watermarked_provenance(provenance, watermark_key)
    rows = [_prompt_ids(tokenizer, p) for p in prompts]
    pad = _pad_id(tokenizer, model)
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    kwargs: dict[str, Any] = {"do_sample": True, "pad_token_id": pad, "max_new_tokens": max_new_tokens}
    kwargs.update(generate_kwargs)
    spec = None
    if watermark_key is not None:
        kwargs["watermarking_config"] = watermarking_config(watermark_key, settings)
        spec = watermark_spec(watermark_key, settings, model.config.get_text_config().vocab_size)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    stops = _stop_ids(tokenizer, model)
    results = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        content = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
        results.append(label_text(content, provenance, signer, config, watermark=spec))
    return results


def generate_labelled(
    model,
    tokenizer,
    prompt: Prompt,
    provenance: Provenance,
    signer,
    *,
    watermark_key: bytes | None,
    max_new_tokens: int = 128,
    config: LabelConfig = LabelConfig(),
    settings: WatermarkSettings = WatermarkSettings(),
    **generate_kwargs: Any,
) -> LabelledText:
    """Generate an answer to `prompt` and return it labelled, signed and (with a key) watermarked.

    `prompt` is a string or a chat (list of {'role', 'content'}); sampling is on by default
    (`do_sample=True`, which the watermark needs to be strong); other `generate` arguments pass through.
    """
    return generate_labelled_batch(
        model,
        tokenizer,
        [prompt],
        provenance,
        signer,
        watermark_key=watermark_key,
        max_new_tokens=max_new_tokens,
        config=config,
        settings=settings,
        **generate_kwargs,
    )[0]


def provenance_for(base, *, adapter_sha256: str | None = None, generator: str = "homebody") -> Provenance:
    """The Provenance of text generated by a `personal.models.BaseModel` (plus an adapter's hash)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        generator_version = version("homebody")
    except PackageNotFoundError:
        generator_version = "0+unknown"
    identity = base.identity()
    return Provenance(generator, generator_version, identity["name"], identity["sha256"], adapter_sha256)
