"""Weight quantization of a base: int8 (per-output-channel) and 4-bit weight-only (group-wise).

Inference runs PyTorch's own CPU kernels: int8 layers run ``quantized::linear_dynamic``
(fbgemm/x86: int8 weights, activations quantized on the fly), 4-bit layers run
``aten._weight_int4pack_mm_for_cpu`` (tinygemm layout, bf16 activations). Neither kernel has a
backward: calling them under autograd silently cuts the graph, so LoRA adapters *below* a
quantized layer never get a gradient. Every quantized layer therefore runs through
``_DequantLinearFn``, whose backward uses the dequantized weight (QLoRA-style): the frozen
weights stay int8 / 4-bit, gradients flow to the inputs and so to every adapter.

The layers subclass ``nn.Linear`` / ``nn.Embedding`` so that peft wraps them with its ordinary
LoRA layer; ``.weight`` is the dequantized float weight, materialised on access (code that
reads a ``Linear``'s weight keeps working), while the stored weight is ``qweight`` + scales.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from privacy.errors import HomebodyError

INT8, INT4 = "int8", "int4"
INT8_WEIGHT_ONLY = "int8-wo"
SCHEMES = (INT8, INT4)


class QuantizationError(HomebodyError):
    """A model or layer cannot be quantized with the requested settings."""


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize. ``scheme`` applies to the Linear layers of the blocks; the token
    embedding (and an LM head tied to it) is int8 when ``embeddings`` is set; ``skip`` names
    modules (suffix match) kept in float. 4-bit layers whose width does not fit ``group_size``
    fall back to int8, and the layout says so. ``weight_only`` names int8 layers (suffix match)
    that keep float activations."""

    scheme: str = INT8
    group_size: int = 32
    embeddings: bool = True
    skip: tuple[str, ...] = field(default_factory=tuple)
    # int8 layers (suffix match) kept on float activations with dequantized weights: accurate
    # but, measured, no faster than float; ``smooth_mlp`` is the cheaper cure for outliers.
    weight_only: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ``QuantizationError`` on an unknown scheme or a bad group size."""
        if self.scheme not in SCHEMES:
            raise QuantizationError(f"unknown quantization {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if self.group_size not in (32, 64, 128, 256):
            raise QuantizationError(f"4-bit group size must be 32, 64, 128 or 256, got {self.group_size}")


# -- the maths -------------------------------------------------------------------------------------

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``w ~= q * scale[:, None]`` with ``q`` in [-127, 127]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit along the input dim.

    Returns ``nibbles`` (uint8 ``[out, in/2]``, two codes per byte, low nibble first) and
    ``scales_zeros`` (float32 ``[in/group, out, 2]``) in tinygemm's convention
    ``w = (code - 8) * scale + zero``.
    """
    w = w.detach().float()
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    codes = torch.round((g - lo) / scale).clamp(0, 15).to(torch.uint8).reshape(out_f, in_f)
    zero = lo + 8 * scale
    sz = torch.stack([scale.squeeze(-1).t(), zero.squeeze(-1).t()], dim=-1).contiguous()
    return codes[:, 0::2] | (codes[:, 1::2] << 4), sz


def unpack_int4(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 ``[out, in/2]`` -> int32 codes ``[out, in]``."""
    codes = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=-1)
    return codes.reshape(nibbles.shape[0], -1).to(torch.int32)


def dequantize_int4(nibbles: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    """The float32 weight a 4-bit layer stands for."""
    codes = unpack_int4(nibbles).float()
    out_f, in_f = codes.shape
    scale = sz[..., 0].t().unsqueeze(-1)  # [out, in/group, 1]
    zero = sz[..., 1].t().unsqueeze(-1)
    return ((codes.reshape(out_f, in_f // group, group) - 8) * scale + zero).reshape(out_f, in_f)


def _prepack_int8(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm/x86 packed weights for ``quantized::linear_dynamic``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized-tensor constructors warn of a future deprecation
        qt = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qt, None if bias is None else bias.float())


@functools.lru_cache(maxsize=1)
def _reduce_range() -> bool:
    """7-bit activations unless the CPU has VNNI: without it fbgemm's u8*s8 pair sums can
    saturate int16 (PyTorch's own default for x86 is to reduce the range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return not re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags)


class _DequantLinearFn(torch.autograd.Function):
    """``y = kernel(x)`` forward; ``dx = dy @ W_dequantized`` backward (the weights stay frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantLinearBase") -> torch.Tensor:
        ctx.layer = layer
        return layer.kernel(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer = ctx.layer
        return layer.input_grad(grad_out), None


class QuantLinearBase(nn.Linear):
    """A frozen quantized Linear: no parameters, an inference kernel and a dequantizing backward."""

    scheme = ""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:  # noqa: D107
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a float weight
        self.in_features, self.out_features = in_features, out_features
        if bias:
            self.register_buffer("bias", torch.zeros(out_features))
        else:
            self.bias = None

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantized float32 weight (materialised on each access: prefer ``qweight``)."""
        return self.dequantized()

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_grad(self, grad_out: torch.Tensor) -> torch.Tensor:
        """``dL/dx`` for ``y = x W^T + b``, with W dequantized."""
        return grad_out.matmul(self.dequantized().to(grad_out.dtype))

    def __getstate__(self) -> dict:
        # The kernels' packed weights are opaque objects that neither copy nor pickle: drop them,
        # they are rebuilt from the stored codes on the next forward.
        state = super().__getstate__()
        return {**state, "_packed": None, "_sz_bf16": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _DequantLinearFn.apply(x, self)
        return self.kernel(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


class Int8Linear(QuantLinearBase):
    """int8 weights (per-output-channel scale); fbgemm dynamic-int8 kernel for the forward."""

    scheme = INT8

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:  # noqa: D107
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self._packed = None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a float Linear."""
        q, scale = quantize_int8(linear.weight)
        return cls.from_int8(q, scale, None if linear.bias is None else linear.bias.detach().float())

    @classmethod
    def from_int8(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        """Wrap existing int8 codes (shared, not copied: used to keep a tied LM head tied)."""
        layer = cls(q.shape[1], q.shape[0], bias is not None)
        layer.qweight, layer.scale = q, scale
        if bias is not None:
            layer.bias = bias
        return layer.repack()

    def repack(self) -> "Int8Linear":
        """(Re)build the kernel's packed weights from ``qweight``/``scale`` (after loading them)."""
        self._packed = _prepack_int8(self.qweight, self.scale.float(), None)  # bias added after rescaling
        return self

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]

    def input_grad(self, grad_out: torch.Tensor) -> torch.Tensor:
        # (dy * s) @ q avoids materialising the scaled float weight.
        return (grad_out.float() * self.scale.float()).matmul(self.qweight.float()).to(grad_out.dtype)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self.repack()
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        # The kernel quantizes activations with ONE scale per call; over many tokens the outlier
        # tokens crush the rest (SmolLM2 perplexity +370% measured). Normalising each row first
        # makes that scale per token (+3% measured); the row scale is multiplied back after.
        m = x2.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        y = torch.ops.quantized.linear_dynamic((x2 / m).contiguous(), self._packed, _reduce_range()) * m
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int8WeightOnlyLinear(Int8Linear):
    """int8 weights, float activations: the weight is dequantized for a dense matmul.
    PyTorch's weight-only int8 kernel (``_weight_int8pack_mm``) measured ~10x slower than that
    here even for one row, so it is used only where ``DENSE_ROWS`` allows (off by default)."""

    scheme = INT8_WEIGHT_ONLY
    DENSE_ROWS = 0

    def repack(self) -> "Int8WeightOnlyLinear":
        self._packed = True  # nothing to pack: the kernel reads qweight/scale directly
        return self

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()
        if x2.shape[0] > self.DENSE_ROWS:
            y = nn.functional.linear(x2, self.dequantized())
        else:
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scale.float())
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(QuantLinearBase):
    """4-bit group-wise weights; PyTorch's CPU int4 weight-only kernel (bf16 activations)."""

    scheme = INT4

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 32) -> None:  # noqa: D107
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_zeros", torch.zeros(in_features // group_size, out_features, 2))
        self._packed = None
        self._sz_bf16 = None

    @staticmethod
    def fits(linear: nn.Linear, group_size: int) -> bool:
        """Whether the CPU int4 kernel can take this layer."""
        return linear.in_features % group_size == 0 and linear.in_features % 2 == 0

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 32) -> "Int4Linear":
        """Quantize a float Linear (check ``fits`` first)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        layer.qweight, layer.scales_zeros = quantize_int4(linear.weight, group_size)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.repack()

    def repack(self) -> "Int4Linear":
        """(Re)build the kernel layout from the stored nibbles."""
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.qweight), 1)
        self._sz_bf16 = self.scales_zeros.to(torch.bfloat16)
        return self

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.qweight, self.scales_zeros.float(), self.group_size)

    # The int4 kernel is fast for a few rows (decoding) but slow for many (prefill, training):
    # above this many rows the weight is dequantized to bf16 for one dense matmul instead.
    DENSE_ROWS = 16

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self.repack()
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
        if x2.shape[0] > self.DENSE_ROWS:
            y = nn.functional.linear(x2, self.dequantized().to(torch.bfloat16))
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self._packed, self.group_size, self._sz_bf16)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int8Embedding(nn.Embedding):
    """Token embedding stored as int8 rows with a per-row scale (frozen)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:  # noqa: D107
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, 2.0, False, False
        self.register_buffer("qweight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> "Int8Embedding":
        """Quantize a float embedding table."""
        layer = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        layer.qweight, layer.scale = quantize_int8(emb.weight)
        return layer

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dequantized float32 table (materialised on access)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Output in the scales' dtype, so a base cast to bfloat16 stays bfloat16 throughout.
        rows = nn.functional.embedding(ids, self.qweight).float() * self.scale.float()[ids].unsqueeze(-1)
        return rows.to(self.scale.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme=int8"


# -- whole models ----------------------------------------------------------------------------------

CALIBRATION = (
    "The owner woke at seven, went to the gym on Monday, Wednesday and Friday, and had coffee after.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Meet me at the station at half past five; the train to the city leaves at six.",
    "What would you like to do this evening? Perhaps the cinema, or a walk in the park.",
)


def smooth_mlp(model: nn.Module, tokenizer, texts=CALIBRATION, alpha: float = 0.5) -> int:
    """SmoothQuant for the MLP of Llama-like blocks, exact in float: ``down_proj``'s input is
    ``act(gate) * up``, linear in ``up``, so dividing ``up_proj``'s row j by ``s_j`` and
    multiplying ``down_proj``'s column j by ``s_j`` changes nothing, while moving the
    intermediate activations' outlier channels into the weights, where per-row int8 scales
    absorb them. ``s_j = max|a_j|^alpha / max|W_j|^(1 - alpha)`` from ``texts``. Returns the
    number of blocks smoothed (0 for other architectures)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers or not hasattr(getattr(layers[0], "mlp", None), "up_proj"):
        return 0
    amax: dict[int, torch.Tensor] = {}

    def hook(i):
        def record(_mod, args):
            a = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
            amax[i] = torch.maximum(amax[i], a) if i in amax else a
        return record

    handles = [block.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, block in enumerate(layers)]
    try:
        with torch.no_grad():
            for text in texts:
                model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=128))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for i, block in enumerate(layers):
            up, down = block.mlp.up_proj, block.mlp.down_proj
            w = down.weight.float().abs().amax(0).clamp(min=1e-5)
            s = (amax[i].clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(1e-2, 1e2)
            up.weight.div_(s[:, None].to(up.weight.dtype))
            if up.bias is not None:
                up.bias.div_(s.to(up.bias.dtype))
            down.weight.mul_(s[None, :].to(down.weight.dtype))
    return len(layers)


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _module_name(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((n for n, m in model.named_modules() if m is target), None)


def quantize_model(model: nn.Module, cfg: QuantConfig) -> dict[str, str]:
    """Replace the model's Linear layers (and token embedding) in place by quantized ones.

    Returns the layout ``{module name: "int8" | "int4" | "int8-embedding" | "tied:<embedding name>"}``
    that ``skeleton_from_layout`` needs to rebuild the structure before loading saved weights.
    """
    cfg.validate()
    layout: dict[str, str] = {}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_name, head_name = _module_name(model, emb), _module_name(model, head)
    tied = emb is not None and head is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    if cfg.embeddings and isinstance(emb, nn.Embedding) and not isinstance(emb, Int8Embedding):
        qemb = Int8Embedding.from_float(emb)
        _set_module(model, emb_name, qemb)
        layout[emb_name] = "int8-embedding"
        if tied and type(head) is nn.Linear:
            # The tied head's per-row int8 codes ARE the embedding's: share them, store once.
            _set_module(model, head_name, Int8Linear.from_int8(qemb.qweight, qemb.scale))
            layout[head_name] = f"tied:{emb_name}"
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear or _skipped(name, cfg.skip) or name in layout:
            continue
        if tied and name == head_name:
            continue  # embeddings kept in float: the head stays tied to them
        if cfg.scheme == INT4 and name != head_name and Int4Linear.fits(mod, cfg.group_size):
            _set_module(model, name, Int4Linear.from_float(mod, cfg.group_size))
            layout[name] = f"int4/g{cfg.group_size}"
        elif _skipped(name, cfg.weight_only):
            _set_module(model, name, Int8WeightOnlyLinear.from_float(mod))
            layout[name] = INT8_WEIGHT_ONLY
        else:
            _set_module(model, name, Int8Linear.from_float(mod))
            layout[name] = INT8
    for p in model.parameters():
        p.requires_grad_(False)
    return layout


def skeleton_from_layout(model: nn.Module, layout: dict[str, str]) -> None:
    """Swap in empty quantized shells per ``layout`` (their buffers are then loaded)."""
    for name, kind in layout.items():
        if kind.startswith("tied:"):
            continue
        old = model.get_submodule(name)
        if kind == "int8-embedding":
            new: nn.Module = Int8Embedding(old.num_embeddings, old.embedding_dim, old.padding_idx)
        elif kind == INT8:
            new = Int8Linear(old.in_features, old.out_features, old.bias is not None)
        elif kind == INT8_WEIGHT_ONLY:
            new = Int8WeightOnlyLinear(old.in_features, old.out_features, old.bias is not None)
        elif kind.startswith("int4/g"):
            new = Int4Linear(old.in_features, old.out_features, old.bias is not None, int(kind[len("int4/g"):]))
        else:
            raise QuantizationError(f"unknown layer kind {kind!r} for {name} in the slim manifest")
        _set_module(model, name, new)


def finish_loaded(model: nn.Module, layout: dict[str, str]) -> None:
    """After loading buffers: re-tie heads to their embedding and build the kernels' packed weights."""
    for name, kind in layout.items():
        if kind.startswith("tied:"):
            emb = model.get_submodule(kind[len("tied:"):])
            _set_module(model, name, Int8Linear.from_int8(emb.qweight, emb.scale))
    for mod in model.modules():
        if isinstance(mod, (Int8Linear, Int4Linear)):
            mod.repack()


def state_dict_for_save(model: nn.Module, layout: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state dict to write: tied heads dropped (they share the embedding's tensors)."""
    drop = tuple(name + "." for name, kind in layout.items() if kind.startswith("tied:"))
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(drop)}


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what the weights occupy in memory)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
