"""Slimming a base end to end: prune -> distil -> quantize, recorded step by step in a manifest.

Model names may carry the steps after a colon, so every command that takes ``--model`` can run
on a slimmed base: ``smollm2-135m:int8``, ``minilm-l6:int4``, ``smollm2-135m:prune0.25+int8``
(``prune<ratio>`` MLP channels, ``heads<k>`` query heads per KV group, ``int8``/``int4``
weights). Such a base is slimmed once and cached as a slim folder (under
``<cache>/slim/``); later loads read the folder directly, never the float weights.
"""

from __future__ import annotations

import gc
import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from personal.base_identity import BaseModel, LoadRequest, register_matcher
from personal.slim.distil import DistilConfig, distil, perplexity
from personal.slim.manifest import SlimError, SlimManifest, is_slim_folder
from personal.slim.prune import PruneConfig, prune_model
from personal.slim.quantize import CALIBRATION, INT4, INT8, QuantConfig, quantize_model, smooth_mlp

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SlimConfig:
    """Which steps to run. ``quantize``: None, "int8" or "int4"; ``calibration``: how many
    calibration texts the pruning scores use (when texts are given). The default runs no step,
    like ``homebody slim`` without options (tests/test_defaults.py)."""

    quantize: str | None = None
    group_size: int = 32
    prune: PruneConfig = field(default_factory=PruneConfig)
    distil: DistilConfig | None = None
    calibration: int = 64

    @property
    def empty(self) -> bool:
        """No step at all."""
        return self.quantize is None and self.prune.empty and self.distil is None


_TOKEN = re.compile(r"^(int8|int4|prune(0?\.\d+)|heads(\d+))$")


def parse_spec(spec: str) -> SlimConfig:
    """``"prune0.25+int8"`` -> SlimConfig; raises ``SlimError`` naming the bad token."""
    quant, mlp, heads = None, 0.0, 0
    for tok in [t for t in spec.split("+")]:
        m = _TOKEN.match(tok.strip())
        if not m:
            raise SlimError(f"unknown slimming step {tok!r} in {spec!r}: use int8, int4, prune<ratio> (e.g. prune0.25), "
                            "heads<k>, joined by '+'")
        tok = tok.strip()
        if tok in (INT8, INT4):
            if quant:
                raise SlimError(f"two quantizations in {spec!r}")
            quant = tok
        elif tok.startswith("prune"):
            mlp = float(m.group(2))
        else:
            heads = int(m.group(3))
    cfg = SlimConfig(quantize=quant, prune=PruneConfig(mlp=mlp, heads=heads))
    cfg.prune.validate()
    return cfg


def _init_kwargs(model: Any) -> dict[str, Any]:
    if type(model).__name__ == "BertModel" and getattr(model, "pooler", None) is None:
        return {"add_pooling_layer": False}
    return {}


def run_slim(base: BaseModel, cfg: SlimConfig, *, teacher: BaseModel | None = None,
             texts: Sequence[str] | None = None, calibration: Sequence[str] | None = None,
             heldout: Sequence[str] | None = None, progress: Progress | None = None) -> tuple[Any, SlimManifest]:
    """Slim ``base.model`` IN PLACE and return it with its manifest (not yet saved).

    ``texts`` feed distillation; ``calibration`` (default: ``texts``) scores pruning; ``heldout``
    (causal bases) measures the perplexity each step costs, recorded in the manifest.
    """
    model = base.model
    prior = SlimManifest.read(Path(base.name)) if is_slim_folder(base.name) else None
    if prior and prior.layout:
        raise SlimError(f"{base.name} is already quantized: slim its float source instead")
    if cfg.empty:
        raise SlimError("nothing to do: give --quantize, --prune or --distil-from")
    causal = base.kind == "causal"
    measure = (lambda m: round(perplexity(m, base.tokenizer, heldout), 3)) if (heldout and causal) else None
    steps: list[dict[str, Any]] = list(prior.steps) if prior else []
    ppl = measure(model) if measure else None
    if not cfg.prune.empty:
        calib = calibration if calibration is not None else texts
        calib = list(calib[: cfg.calibration]) if calib else None
        done = prune_model(model, cfg.prune, base.tokenizer, calib)
        entry = {"step": "prune", **asdict(cfg.prune), **done}
        if measure:
            entry["heldout_perplexity"] = {"before": ppl, "after": (ppl := measure(model))}
        steps.append(entry)
    if cfg.distil is not None:
        if teacher is None or not texts:
            raise SlimError("distillation needs a teacher (--distil-from) and text (--data)")
        report = (lambda i, n, loss: progress("distil", i, n)) if progress else None
        done = distil(model, teacher.model, base.tokenizer, texts, cfg.distil, report)
        entry = {"step": "distil", "teacher": teacher.identity(), **done}
        if measure:
            entry["heldout_perplexity"] = {"teacher": measure(teacher.model), "before": ppl, "after": (ppl := measure(model))}
        steps.append(entry)
    layout: dict[str, str] = {}
    if cfg.quantize:
        smoothed = 0
        if cfg.quantize == INT8:  # activations are int8 too: move their outliers into the weights first
            calib = list((calibration or texts or [])[:16]) or list(CALIBRATION)
            smoothed = smooth_mlp(model, base.tokenizer, calib)
        layout = quantize_model(model, QuantConfig(scheme=cfg.quantize, group_size=cfg.group_size))
        kinds: dict[str, int] = {}
        for kind in layout.values():
            kinds[kind.split(":")[0]] = kinds.get(kind.split(":")[0], 0) + 1
        entry = {"step": "quantize", "scheme": cfg.quantize, "group_size": cfg.group_size if cfg.quantize == INT4 else None,
                 "layers": kinds, "smoothed_mlp_blocks": smoothed}
        if measure:
            entry["heldout_perplexity"] = {"before": ppl, "after": measure(model)}
        steps.append(entry)
    manifest = SlimManifest(source=prior.source if prior else base.identity(), kind=base.kind,
                            model_class=type(model).__name__, init_kwargs=_init_kwargs(model), steps=steps, layout=layout)
    return model, manifest


def slim_to_folder(base: BaseModel, cfg: SlimConfig, out: Path, **kwargs: Any) -> SlimManifest:
    """``run_slim`` then ``save_slim`` into ``out``; returns the written manifest."""
    from personal.slim.folder import save_slim

    model, manifest = run_slim(base, cfg, **kwargs)
    return save_slim(model, base.tokenizer, manifest, Path(out))


def _cache_folder(cache: Path, base_name: str, spec: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base_name)
    if len(safe) > 40 or Path(base_name).expanduser().is_dir():
        safe = hashlib.sha256(str(Path(base_name).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache / "slim" / f"{safe}--{spec.replace('+', '_')}"


def load_spec(name: str, cache: Path, load_base: Callable[[str], BaseModel]) -> BaseModel:
    """Load ``BASE:STEPS`` (e.g. ``smollm2-135m:int8``): slim once into the cache, then load the folder.

    ``load_base`` loads the float source by name (``personal.models.load_base`` with this cache).
    """
    from personal.slim.folder import load_slim, save_slim

    base_name, _, spec = name.rpartition(":")
    if not base_name or not spec:
        raise SlimError(f"bad model name {name!r}: expected BASE:STEPS such as smollm2-135m:int8")
    cfg = parse_spec(spec)
    folder = _cache_folder(Path(cache), base_name, spec)
    if not is_slim_folder(folder):
        base = load_base(base_name)
        model, manifest = run_slim(base, replace(cfg))
        if not is_slim_folder(folder):  # another process may have written it meanwhile
            save_slim(model, base.tokenizer, manifest, folder)
        del base, model
        gc.collect()
    return load_slim(folder, name=name)


def _load_request(request: LoadRequest) -> BaseModel:
    return load_spec(request.name, request.cache, request.load)


register_matcher("BASE:STEPS (a slimmed base)", lambda name: ":" in name, _load_request, rank=30)
