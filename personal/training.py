"""LoRA on a frozen base, trained with opacus DP-SGD (or, labelled as such, without privacy).

The model (``PersonalModel``) is the base backbone with peft LoRA layers injected once, split at
the lowest adapted layer: everything below it is frozen, so its output is computed once per
example and cached; training and prediction run only the adapted upper layers, a pooling step
(mean over tokens for encoders, the last real token for causal bases) and a linear head over the
label space. Swapping devices means copying adapter arrays in (``load_adapter``), never
re-wrapping.

DP-SGD: each step draws a Poisson sample (every example independently with probability
``q = batch_size / n``), computes per-example gradients (opacus hooks), clips each to
``max_grad_norm``, adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` and divides
by the expected batch size. ``steps = ceil(epochs / q)``. The noise multiplier is given, or
calibrated with ``privacy.accountant.noise_for_epsilon`` to the run's (epsilon, delta). By
default (``DPConfig.rng == "os-csprng"``) both the Poisson sampling and the noise come from the OS
CSPRNG (``privacy.randomness``; the noise sums four Gaussian draws, as opacus' secure mode does,
against floating-point attacks). ``rng="seeded"`` (simulations and tests only, asked for
explicitly) draws them from generators seeded with ``TrainConfig.seed``: reproducible, and no
privacy at all against anyone who knows the seed, so a real device's gate refuses such a release.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, MutableMapping, Sequence

import numpy as np

from personal.adapter import Adapter, AdapterMismatch, LoraSettings
from personal.examples import LM, Example
from personal.models import CAUSAL, BaseModel
from privacy.errors import HomebodyError
from privacy.randomness import OS_CSPRNG, RNG_KINDS, SEEDED, secure_normal, secure_uniform

if TYPE_CHECKING:
    import torch

    from privacy.accountant import SubsampledGaussian

__all__ = ["LoraSettings", "DPConfig", "TrainConfig", "DEFAULT_EPSILON", "personal_lora", "TrainResult", "MechanismPlan",
           "PersonalModel",
           "TrainingError", "usable_examples", "wrap", "plan_mechanism", "train_adapter"]

DEFAULT_TARGETS = {"encoder": ("query", "value"), "causal": ("q_proj", "v_proj")}
LM_SHARE = "lm"
DEFAULT_EPSILON = 3.0  # the target epsilon of a personalization that names neither epsilon nor noise (CLI, SDK, API)


class TrainingError(HomebodyError):
    """Training cannot run with these inputs (no examples, bad settings...)."""


@dataclass(frozen=True)
class DPConfig:
    """How private a run is: a target ``epsilon`` or a given ``noise_multiplier`` at ``delta``.

    ``enabled=False`` is non-private training (for comparison; labelled as such everywhere).
    ``rng``: where noise and sampling come from: ``"os-csprng"`` (the default, every real release)
    or ``"seeded"`` (simulations and tests that need reproducible runs, from ``TrainConfig.seed``).
    """

    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    rng: str = OS_CSPRNG
    accountant: str = "pld"
    enabled: bool = True

    @classmethod
    def non_private(cls) -> "DPConfig":
        """Plain training, no clipping, no noise, no privacy guarantee."""
        return cls(enabled=False)

    def validate(self) -> None:
        """Raise ``TrainingError`` on contradictory or out-of-range settings."""
        if self.rng not in RNG_KINDS:
            raise TrainingError(f"rng must be one of {', '.join(RNG_KINDS)}, got {self.rng!r}")
        if not self.enabled:
            return
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise TrainingError("give exactly one of epsilon or noise multiplier (or train non-private)")
        if self.epsilon is not None and not (0 < self.epsilon < math.inf):
            raise TrainingError(f"epsilon must be > 0, got {self.epsilon}")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise TrainingError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not (0 < self.delta < 1) or self.max_grad_norm <= 0:
            raise TrainingError(f"need 0 < delta < 1 and max_grad_norm > 0 (got {self.delta}, {self.max_grad_norm})")


def personal_lora() -> LoraSettings:
    """The LoRA placement of a personalization unless told otherwise: ``LoraSettings``' rank on the
    top layer only, so the frozen lower layers' outputs are computed once and cached (the
    federation's shared adapter uses the same placement)."""
    return LoraSettings(layers=(-1,))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``batch_size`` is the EXPECTED batch size under Poisson sampling.

    The defaults are the one source of ``homebody personalize``'s options, the SDK's
    ``Assistant.personalize`` and the local API's ``POST /v1/personalize`` (tests/test_defaults.py).
    """

    lora: LoraSettings = field(default_factory=personal_lora)
    epochs: float = 3.0
    batch_size: int = 32
    sample_rate: float | None = None  # fixes q (expected batch = q * n) instead of batch_size
    lr: float = 3e-3
    optimizer: str = "adam"  # or "sgd"
    max_length: int = 64
    seed: int = 0
    record_norms: bool = False  # keep per-example gradient norms before clipping (diagnostics, tests)


@dataclass(frozen=True)
class MechanismPlan:
    """The DP release a run will make: noise multiplier, sample rate, steps, delta (and target epsilon)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float | None

    def mechanism(self) -> "SubsampledGaussian":
        """As the accountant's release object."""
        from privacy.accountant import SubsampledGaussian

        return SubsampledGaussian(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps)


@dataclass
class TrainResult:
    """What a run produced. ``mechanism`` is None for non-private training."""

    adapter: Adapter
    mechanism: "SubsampledGaussian | None"
    steps: int
    epsilon: float | None
    delta: float | None
    non_private: bool
    losses: list[float]
    step_seconds: list[float]
    seconds: float
    grad_norms: list[np.ndarray] = field(default_factory=list)

    @property
    def privacy_label(self) -> str:
        """One line for every output: the guarantee, or that there is none."""
        if self.non_private:
            return "NON-PRIVATE training (no differential privacy)"
        m = self.mechanism
        return (f"DP-SGD epsilon={self.epsilon:.3g} delta={self.delta:g} (noise {m.noise_multiplier:.3g}, "
                f"sample rate {m.sample_rate:.3g}, {m.steps} steps)")


def _sample_rate(n: int, cfg: TrainConfig) -> float:
    if cfg.sample_rate is not None:
        if not 0 < cfg.sample_rate <= 1:
            raise TrainingError(f"sample rate must be in (0, 1], got {cfg.sample_rate}")
        return float(cfg.sample_rate)
    return min(1.0, cfg.batch_size / n)


def plan_mechanism(n: int, cfg: TrainConfig, dp: DPConfig) -> MechanismPlan:
    """The release for ``n`` examples: q = batch/n, steps = ceil(epochs/q), noise given or calibrated."""
    dp.validate()
    if n < 1:
        raise TrainingError("no training examples")
    q = _sample_rate(n, cfg)
    steps = max(1, math.ceil(cfg.epochs / q))
    if dp.noise_multiplier is not None:
        z = float(dp.noise_multiplier)
    else:
        from privacy.accountant import noise_for_epsilon

        z = noise_for_epsilon(dp.epsilon, q, steps, dp.delta, accountant=dp.accountant)
    eps = None
    if z > 0:
        from privacy.accountant import SubsampledGaussian, compute_epsilon

        eps = compute_epsilon([SubsampledGaussian(z, q, steps)], dp.delta, dp.accountant)
    return MechanismPlan(noise_multiplier=z, sample_rate=q, steps=steps, delta=dp.delta, epsilon=eps)


def _torch():
    import torch

    return torch


class PersonalModel:
    """A base with LoRA injected once, split for cached lower layers, plus a label head.

    Build it with ``wrap(base, lora)``. ``module`` (a ``torch.nn.Module``) holds exactly the
    trainable parts and runs from cached hidden states; ``features`` computes those states.
    """

    def __init__(self, base: BaseModel, lora: LoraSettings) -> None:
        torch = _torch()
        from peft import LoraConfig, inject_adapter_in_model

        self.base, self.lora = base, lora
        self.layers = lora.resolved_layers(base.num_layers)
        targets = lora.targets or DEFAULT_TARGETS[base.kind]
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets),
                            layers_to_transform=list(self.layers), bias="none")
        with torch.random.fork_rng(devices=[]):  # a seeded LoRA init that leaves the global RNG alone
            torch.manual_seed(0)
            inject_adapter_in_model(config, base.model)
        self.backbone = base.model.model if base.kind == CAUSAL else base.model
        blocks = self.backbone.layers if base.kind == CAUSAL else self.backbone.encoder.layer
        self.start = self.layers[0]
        self.lora_params = {n: p for n, p in base.model.named_parameters() if "lora_" in n}
        if not self.lora_params:
            raise TrainingError(f"no LoRA layer matched targets {targets} in {base.name}")
        self._initial = {n: p.detach().clone() for n, p in self.lora_params.items()}
        self.module = _Upper(base, blocks[self.start:], torch.nn.Linear(base.hidden_size, 1))
        self.labels: list[str] = []
        self.set_labels([])
        # Lower-layer features depend only on the frozen base, never on an adapter: memoise a few.
        self._memo: dict[tuple, tuple] = {}
        self.memo_size = 4

    # -- adapter tensors ------------------------------------------------------------------
    def set_labels(self, labels: Sequence[str]) -> None:
        """Resize the head to ``labels`` (zero-initialised) if it does not fit them already."""
        torch = _torch()
        labels = list(labels)
        if labels != self.labels or self.module.head.out_features != max(1, len(labels)):
            head = torch.nn.Linear(self.base.hidden_size, max(1, len(labels)))
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
            self.module.head = head
            self.labels = labels

    def clear(self, labels: Sequence[str] = ()) -> None:
        """Back to the base: LoRA at its initial state (B = 0, so no change) and a zero head."""
        torch = _torch()
        with torch.no_grad():
            for n, p in self.lora_params.items():
                p.copy_(self._initial[n])
        self.labels = ["\0"]  # force a fresh head
        self.set_labels(labels)

    def load_adapter(self, adapter: Adapter) -> None:
        """Copy an adapter's arrays in; refuse one made for another base or other LoRA settings."""
        torch = _torch()
        adapter.check_base(self.base.identity())
        if adapter.lora != self.lora:
            raise AdapterMismatch(f"adapter LoRA settings {adapter.lora} differ from this model's {self.lora}")
        missing = set(self.lora_params) - set(adapter.tensors)
        if missing:
            raise AdapterMismatch(f"adapter lacks {len(missing)} LoRA tensors (e.g. {sorted(missing)[0]})")
        self.set_labels(adapter.labels)
        with torch.no_grad():
            for n, p in self.lora_params.items():
                p.copy_(torch.from_numpy(np.asarray(adapter.tensors[n])).to(p.dtype))
            self.module.head.weight.copy_(torch.from_numpy(np.asarray(adapter.tensors["head.weight"])))
            self.module.head.bias.copy_(torch.from_numpy(np.asarray(adapter.tensors["head.bias"])))

    def export_adapter(self, meta: dict[str, Any] | None = None) -> Adapter:
        """The current LoRA + head as plain float32 arrays."""
        tensors = {n: p.detach().float().cpu().numpy().copy() for n, p in self.lora_params.items()}
        tensors["head.weight"] = self.module.head.weight.detach().cpu().numpy().copy()
        tensors["head.bias"] = self.module.head.bias.detach().cpu().numpy().copy()
        return Adapter(self.base.identity(), list(self.labels), tensors, self.lora, dict(meta or {}))

    # -- forward ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Right-padded token ids and attention mask."""
        enc = self.base.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def features(self, ids: "torch.Tensor", mask: "torch.Tensor", batch: int = 64) -> "torch.Tensor":
        """Hidden states entering the lowest adapted layer (frozen, so computed once and cached)."""
        torch = _torch()
        out = []
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                out.append(self.module.lower(ids[i:i + batch], mask[i:i + batch], self.start))
        return torch.cat(out) if out else torch.zeros(0)

    def use_feature_store(self, store: MutableMapping, max_entries: int | None = None) -> None:
        """Memoise lower-layer features in ``store`` (say, a disk-spilling cache shared by many
        devices on one base) instead of the small in-memory memo; ``None`` means no entry limit."""
        self._memo = store
        self.memo_size = max_entries if max_entries is not None else 1 << 62

    def has_features(self, texts: Sequence[str], max_length: int) -> bool:
        """Are ``texts``' lower-layer features memoised already?"""
        return (max_length, tuple(texts)) in self._memo

    def put_features(self, texts: Sequence[str], max_length: int, ids: "torch.Tensor", mask: "torch.Tensor",
                     hidden: "torch.Tensor") -> None:
        """Memoise features computed elsewhere (e.g. batched across devices); they must equal
        what ``encode(texts, max_length)`` would compute."""
        self._memo[(max_length, tuple(texts))] = (ids, mask, hidden)

    def encode(self, texts: Sequence[str], max_length: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """(ids, mask, lower-layer features) for ``texts``, memoised (the last ``memo_size`` lists)."""
        key = (max_length, tuple(texts))
        if key not in self._memo:
            ids, mask = self.tokenize(texts, max_length)
            while len(self._memo) >= self.memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = (ids, mask, self.features(ids, mask))
        return self._memo[key]

    def predict_proba(self, texts: Sequence[str], max_length: int = 64, batch: int = 64) -> np.ndarray:
        """Probabilities over ``self.labels`` for each text (eval mode, no grad)."""
        torch = _torch()
        if not self.labels:
            raise TrainingError("the model has no label space: load an adapter first")
        _, mask, hidden = self.encode(texts, max_length)
        self.module.eval()
        with torch.no_grad():
            logits = torch.cat([self.module(hidden[i:i + batch], mask[i:i + batch])[0]
                                for i in range(0, len(texts), batch)])
        return torch.softmax(logits.float(), dim=-1).numpy()

    def embed(self, texts: Sequence[str], max_length: int = 64, batch: int = 64) -> np.ndarray:
        """Pooled, L2-normalised sentence embeddings (used for the base-without-adapter baseline)."""
        torch = _torch()
        _, mask, hidden = self.encode(texts, max_length)
        self.module.eval()
        with torch.no_grad():
            pooled = torch.cat([self.module(hidden[i:i + batch], mask[i:i + batch], pool_only=True)
                                for i in range(0, len(texts), batch)])
        return torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()


def _upper_class():
    torch = _torch()
    nn = torch.nn

    class Upper(nn.Module):
        """The adapted upper layers + pooling + head: the only module opacus sees."""

        def __init__(self, base: BaseModel, blocks, head) -> None:
            super().__init__()
            self.kind = base.kind
            self.blocks = nn.ModuleList(list(blocks))
            self.head = head
            # Frozen helpers kept out of the module tree so opacus never walks them.
            object.__setattr__(self, "_base", base)

        def _mask_and_pos(self, hidden, mask):
            from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

            cfg = self._base.model.config
            if self.kind == CAUSAL:
                pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
                attn = create_causal_mask(config=cfg, inputs_embeds=hidden, attention_mask=mask, cache=None,
                                          position_ids=pos)
                return attn, {"position_embeddings": self._base.model.model.rotary_emb(hidden, position_ids=pos),
                              "position_ids": pos}
            return create_bidirectional_mask(config=cfg, inputs_embeds=hidden, attention_mask=mask), {}

        def run_blocks(self, blocks, hidden, mask):
            attn, extra = self._mask_and_pos(hidden, mask)
            for block in blocks:
                out = block(hidden, attention_mask=attn, **extra)
                hidden = out[0] if isinstance(out, tuple) else out
            return hidden

        def lower(self, ids, mask, start):
            """Embeddings and the frozen layers below ``start``."""
            bb = self._base.model
            if self.kind == CAUSAL:
                hidden = bb.model.embed_tokens(ids)
                return self.run_blocks(bb.model.layers[:start], hidden, mask)
            hidden = bb.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
            return self.run_blocks(bb.encoder.layer[:start], hidden, mask)

        def forward(self, hidden, mask, pool_only: bool = False):
            """Logits over the labels (and final hidden states, for LM examples)."""
            hidden = self.run_blocks(self.blocks, hidden, mask)
            if self.kind == CAUSAL:
                hidden = self._base.model.model.norm(hidden)
                last = mask.long().sum(dim=1).clamp(min=1) - 1
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            pooled = pooled.float()
            if pool_only:
                return pooled
            return self.head(pooled), hidden

    return Upper


def _Upper(base: BaseModel, blocks, head):
    return _upper_class()(base, blocks, head)


def wrap(base: BaseModel, lora: LoraSettings | None = None) -> PersonalModel:
    """The base's ``PersonalModel`` for ``lora`` (default: ``personal_lora()``): injected on first
    use, then reused while the settings stay the same.

    Asked for other settings (an adapter trained by ``homebody personalize --rank 4``, then one
    from the SDK's defaults, on one served base), the base's LoRA layers are taken out and the new
    ones injected: the previous ``PersonalModel`` is dropped (its adapter was in the vault, not
    here). Callers that share a base across threads hold their model lock around wrap and use.
    """
    lora = lora or personal_lora()
    key = "personal-model"
    pm = base.wrapped.get(key)
    if pm is not None and pm.lora != lora:
        _remove_lora(base)
        del base.wrapped[key]
        pm = None
    if pm is None:
        pm = PersonalModel(base, lora)
        base.wrapped[key] = pm
    return pm


def _remove_lora(base: BaseModel) -> None:
    """Put every module peft wrapped with LoRA back to the plain layer it wrapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = [name for name, module in base.model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = base.model.get_submodule(parent_name) if parent_name else base.model
        setattr(parent, child, getattr(parent, child).get_base_layer())
    if "peft_config" in vars(base.model):  # peft's record of the injection: the next one starts afresh
        del base.model.peft_config


# -- training -------------------------------------------------------------------------------------

def _poisson_indices(n: int, q: float, rng: str, gen: np.random.Generator) -> np.ndarray:
    """Each of ``n`` examples independently with probability ``q`` (OS CSPRNG unless seeded)."""
    u = gen.random(n) if rng == SEEDED else secure_uniform(n)
    return np.nonzero(u < q)[0]


def _secure_normal(shape, std: float, dtype) -> "torch.Tensor":
    """Gaussian noise N(0, std^2) of ``shape`` from the OS CSPRNG, as a torch tensor."""
    torch = _torch()
    return torch.from_numpy(secure_normal(tuple(shape), std)).to(dtype).reshape(shape)


def _make_dp_optimizer(opt, plan: MechanismPlan, dp: DPConfig, expected_batch: float, seed: int):
    torch = _torch()
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class _SecureDPOptimizer(DPOptimizer):
        def add_noise(self):  # noise from the OS CSPRNG instead of torch's seeded Mersenne Twister
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                noise = _secure_normal(p.summed_grad.shape, self.noise_multiplier * self.max_grad_norm,
                                       p.summed_grad.dtype)
                p.grad = (p.summed_grad + noise).view_as(p)
                _mark_as_processed(p.summed_grad)

    seeded = dp.rng == SEEDED
    cls = DPOptimizer if seeded else _SecureDPOptimizer
    # expected_batch_size must be an int for opacus; we rescale below when q*n is fractional.
    dpo = cls(opt, noise_multiplier=plan.noise_multiplier, max_grad_norm=dp.max_grad_norm,
              expected_batch_size=max(1, round(expected_batch)), loss_reduction="mean",
              generator=torch.Generator().manual_seed(seed) if seeded else None)
    return dpo


def _build_optimizer(params, cfg: TrainConfig):
    torch = _torch()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: use adam or sgd")


def _loss(pm: PersonalModel, logits, hidden, labels, ids, mask, is_lm):
    """Mean over the batch of per-example losses: cross-entropy on labels, or LM loss on LM rows."""
    torch = _torch()
    F = torch.nn.functional
    per = F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * (~is_lm).float()
    if bool(is_lm.any()):
        rows = torch.nonzero(is_lm).squeeze(1)
        lm_head = pm.base.model.lm_head
        h = hidden[rows, :-1].to(lm_head.weight.dtype)
        target = ids[rows, 1:].masked_fill(mask[rows, 1:] == 0, -100)
        tok = F.cross_entropy(lm_head(h).float().transpose(1, 2), target, reduction="none", ignore_index=-100)
        lm = tok.sum(dim=1) / (target != -100).sum(dim=1).clamp(min=1)
        per = per.index_add(0, rows, lm)
    return per.mean()


def usable_examples(base: BaseModel, examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """The examples a run trains on: next-event examples within ``labels``, LM examples on causal bases."""
    known = set(labels)
    return [e for e in examples if (e.kind == LM and base.kind == CAUSAL) or (e.kind != LM and e.label in known)]


def train_adapter(
    base: BaseModel,
    examples: Sequence[Example],
    labels: Sequence[str],
    cfg: TrainConfig,
    dp: DPConfig,
    *,
    init: Adapter | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    start_step: int = 0,
    plan: MechanismPlan | None = None,
    checkpoint: Callable[[int, Adapter], None] | None = None,
    checkpoint_every: int = 0,
    audit: Any = None,
) -> TrainResult:
    """Train LoRA + head on ``examples`` over the label space ``labels``.

    With ``dp.enabled`` this is DP-SGD (see the module docstring) and the result carries the
    release (``mechanism``) for the ledger; the caller commits it. ``init`` starts from an adapter
    (a global adapter in federation, a checkpoint on resume). ``start_step``/``plan`` resume a run:
    steps ``start_step..plan.steps-1`` are run with the same mechanism. ``checkpoint(step, adapter)``
    is called every ``checkpoint_every`` steps and on KeyboardInterrupt (then re-raised).
    ``progress(step, total, loss)`` is called after every step. Labels outside ``labels`` are
    dropped; LM examples train only on causal bases. ``audit`` (a ``personal.audit_hook.
    GradientCanaryAudit``, opt-in) inserts white-box gradient canaries and observes every DP step.
    """
    torch = _torch()
    labels = list(labels)
    if not labels:
        raise TrainingError("empty label space")
    index = {lab: i for i, lab in enumerate(labels)}
    use = usable_examples(base, examples, labels)
    if not use:
        raise TrainingError("no training example matches the label space")
    pm = wrap(base, cfg.lora)
    if init is not None:
        if list(init.labels) != labels:
            raise AdapterMismatch("initial adapter has a different label space")
        pm.load_adapter(init)
    else:
        pm.clear(labels)
    n = len(use)
    if audit is not None and not dp.enabled:
        raise TrainingError("a white-box audit observes DP-SGD steps: it needs DP training")
    if dp.enabled:
        plan = plan or plan_mechanism(n, cfg, dp)
        q, total = plan.sample_rate, plan.steps
    else:
        q = _sample_rate(n, cfg)
        total = max(1, math.ceil(cfg.epochs / q))
    batch = max(1, round(q * n))
    ids, mask, hidden = pm.encode([e.text for e in use], cfg.max_length)
    y = torch.tensor([index[e.label] if e.kind != LM else -1 for e in use])
    is_lm = torch.tensor([e.kind == LM for e in use])

    params = [p for p in pm.lora_params.values()] + list(pm.module.head.parameters())
    opt = _build_optimizer(params, cfg)
    module = pm.module
    if dp.enabled:
        from opacus import GradSampleModule

        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean")
        opt = _make_dp_optimizer(opt, plan, dp, q * n, cfg.seed)
        if audit is not None:
            audit.attach(opt, plan, dp)
        model = gsm
    else:
        model = module
    gen = np.random.default_rng(cfg.seed + start_step)
    with torch.random.fork_rng(devices=[]):  # dropout draws are seeded without touching the global RNG
        torch.manual_seed(cfg.seed + start_step)
        return _loop(pm, model, module, opt, gsm if dp.enabled else None, plan, dp, cfg, hidden, mask, ids, y, is_lm,
                     q, n, batch, total, start_step, gen, progress, checkpoint, checkpoint_every)


def _loop(pm, model, module, opt, gsm, plan, dp, cfg, hidden, mask, ids, y, is_lm, q, n, batch, total, start_step,
          gen, progress, checkpoint, checkpoint_every) -> TrainResult:
    """The step loop of ``train_adapter`` (checkpointing, interrupt handling, the result)."""
    torch = _torch()
    module.train()
    losses, times, norms = [], [], []
    t0 = time.perf_counter()
    order = gen.permutation(n)
    step = start_step
    try:
        for step in range(start_step, total):
            ts = time.perf_counter()
            if dp.enabled:
                idx = _poisson_indices(n, q, dp.rng, gen)
            else:
                start = (step * batch) % n
                if start + batch > n:
                    order = gen.permutation(n)
                idx = order[start:start + batch]
            loss = _step(pm, model, opt, hidden, mask, ids, y, is_lm, torch.as_tensor(idx, dtype=torch.long),
                         dp.enabled, cfg.record_norms, norms)
            times.append(time.perf_counter() - ts)
            losses.append(loss)
            if progress:
                progress(step + 1, total, loss)
            if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                checkpoint(step + 1, pm.export_adapter({"steps_done": step + 1}))
    except KeyboardInterrupt:
        if checkpoint:
            checkpoint(step, pm.export_adapter({"steps_done": step}))
        raise
    finally:
        if gsm is not None:
            gsm._close()
        module.eval()
    mech = plan.mechanism() if dp.enabled else None
    meta = {"non_private": not dp.enabled, "steps": total, "examples": n}
    if dp.enabled:
        meta.update(noise_multiplier=plan.noise_multiplier, sample_rate=q, delta=plan.delta, epsilon=plan.epsilon,
                    max_grad_norm=dp.max_grad_norm, rng=dp.rng)
    return TrainResult(adapter=pm.export_adapter(meta), mechanism=mech, steps=total,
                       epsilon=plan.epsilon if dp.enabled else None, delta=plan.delta if dp.enabled else None,
                       non_private=not dp.enabled, losses=losses, step_seconds=times,
                       seconds=time.perf_counter() - t0, grad_norms=norms)


def _step(pm, model, opt, hidden, mask, ids, y, is_lm, idx, private: bool, record: bool, norms: list) -> float:
    """One optimizer step on the rows ``idx`` (an empty Poisson batch still adds the noise)."""
    torch = _torch()
    opt.zero_grad(set_to_none=True)
    if len(idx) == 0:
        # Nothing sampled: the DP step is pure noise; give opacus empty per-example gradients.
        for p in opt.params if private else []:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        if private:
            opt.step()
        return float("nan")
    logits, out = model(hidden[idx], mask[idx])
    loss = _loss(pm, logits, out, y[idx], ids[idx], mask[idx], is_lm[idx])
    with warnings.catch_warnings():
        # opacus' full backward hooks fire on cached (input-less) features: expected here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    if private and record:
        sq = sum(p.grad_sample.reshape(len(idx), -1).pow(2).sum(dim=1) for p in opt.params)
        norms.append(sq.sqrt().detach().numpy())
    opt.step()
    return float(loss.detach())
