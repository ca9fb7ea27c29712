"""White-box audit mode of local DP-SGD: Dirac gradient canaries, every step's noisy gradient observed.

Following the white-box setting of Steinke, Nasr & Jagielski (2023): ``m`` canaries, each a
gradient that is zero except for one coordinate of the trainable parameters (distinct coordinates,
so canaries never overlap), and each included with probability 1/2. At every DP-SGD step an
included canary is Poisson-sampled with the run's sample rate, like any example, clipped by the
optimizer's rule and added to the clipped sum *before* the noise. The auditor then reads the
privatised gradient ``p.grad`` (summed, clipped, noised: everything the iterates reveal and more)
at each canary's coordinate. The score of a canary is the sum over steps of

    (noisy gradient - clipped sum of the ordinary examples) at its coordinate / its clipped norm.

Subtracting the ordinary examples' clipped sum is what a white-box adversary who knows the rest
of the data and every iterate can do; it stays sound because the examples' Poisson sampling is
independent of the canaries (releasing it costs the canaries no privacy). It removes the real
gradients' interference, so an included canary scores ~ Binomial(T, q) + N(0, T z^2) and an
excluded one N(0, T z^2). ``privacy.whitebox.whitebox_audit`` turns the scores into epsilon.

The noise is the optimizer's own (``add_noise``, including the CSPRNG variant); the canaries'
sampling is drawn here, with the run's sample rate, from the OS CSPRNG when the run is secure and
from a seeded generator otherwise. Canaries are at the clip bound by default, so the clipping
leaves them as they are (a canary norm above the bound exercises the clipping rule).

Attach with ``train_adapter(..., audit=GradientCanaryAudit(...))``. ``_test_only_bug`` (an
:class:`InjectedBug`) makes the run leak more than it claims, for the audit's own tests and
benchmarks; no CLI flag reaches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from privacy.errors import HomebodyError
from privacy.whitebox import CanaryScores

if TYPE_CHECKING:
    from personal.training import DPConfig, MechanismPlan


def uses_os_csprng(dp: "DPConfig") -> bool:
    """Does the run draw its noise and sampling from the OS CSPRNG?

    Reads ``DPConfig.rng == "os-csprng"`` where the config has that field, else the older
    ``secure_rng`` flag (both spellings exist across branches of personal/training.py).
    """
    rng = getattr(dp, "rng", None)
    return rng == "os-csprng" if rng is not None else bool(getattr(dp, "secure_rng", False))


class AuditHookError(HomebodyError):
    """The white-box audit cannot run with these settings (too few coordinates, no DP...)."""


@dataclass(frozen=True)
class InjectedBug:
    """TEST-ONLY: a privacy bug to plant in a run that still claims its original epsilon.

    ``noise_scale`` multiplies the noise actually added (0.5 = "halved noise", 0 = "noise off");
    ``sample_rate_scale`` multiplies the rate at which canaries are actually sampled (2 = an
    off-by-two sampler). The accountant, the plan and the ledger never see either.
    """

    noise_scale: float = 1.0
    sample_rate_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_scale < 0 or self.sample_rate_scale <= 0:
            raise AuditHookError("noise scale must be >= 0 and sample-rate scale > 0")


@dataclass(frozen=True)
class CanaryConfig:
    """How many Dirac canaries, their norm (``None``: the clip bound) and the seed of their draws."""

    canaries: int = 1000
    norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 4:
            raise AuditHookError(f"need at least 4 canaries, got {self.canaries}")
        if self.norm is not None and not self.norm > 0:
            raise AuditHookError(f"canary norm must be > 0, got {self.norm}")


class GradientCanaryAudit:
    """Inserts Dirac gradient canaries into one DP-SGD run and scores them from every noisy step.

    ``included`` (which canaries were in) is drawn at construction; ``scores`` fills while the run
    trains; ``sample_rate``/``noise_multiplier`` are what the run claimed (from its plan).
    """

    def __init__(self, cfg: CanaryConfig, *, _test_only_bug: InjectedBug | None = None) -> None:
        self.cfg = cfg
        self.bug = _test_only_bug
        self._rng = np.random.default_rng(cfg.seed)
        self.included = self._rng.random(cfg.canaries) < 0.5
        self.scores = CanaryScores(cfg.canaries)
        self.sample_rate: float | None = None
        self.noise_multiplier: float | None = None
        self.max_grad_norm: float | None = None
        self._secure = False
        self._slots: list[tuple[object, "object", np.ndarray]] = []  # (param, torch index, canary ids)

    def attach(self, optimizer, plan: "MechanismPlan", dp: "DPConfig") -> None:
        """Wrap ``optimizer.add_noise`` (an opacus DPOptimizer) so every step inserts and scores canaries."""
        import torch

        params = list(optimizer.params)
        sizes = [p.numel() for p in params]
        total = int(sum(sizes))
        m = self.cfg.canaries
        if total < m:
            raise AuditHookError(f"{m} Dirac canaries need {m} distinct coordinates; the model trains only {total} "
                                 "(raise the LoRA rank or use fewer canaries)")
        coords = self._rng.choice(total, size=m, replace=False)
        starts = np.cumsum([0] + sizes)
        self._slots = []
        for i, p in enumerate(params):
            ids = np.nonzero((coords >= starts[i]) & (coords < starts[i + 1]))[0]
            if len(ids):
                self._slots.append((p, torch.as_tensor(coords[ids] - starts[i], dtype=torch.long), ids))
        self.sample_rate, self.noise_multiplier = plan.sample_rate, plan.noise_multiplier
        self.max_grad_norm, self._secure = dp.max_grad_norm, uses_os_csprng(dp)
        original = optimizer.add_noise

        def add_noise() -> None:
            self._step(optimizer, original)

        optimizer.add_noise = add_noise

    def _sampled(self) -> np.ndarray:
        """This step's Poisson draw over all canaries (only the included ones will count)."""
        q = min(1.0, self.sample_rate * (self.bug.sample_rate_scale if self.bug else 1.0))
        m = self.cfg.canaries
        u = (np.frombuffer(os.urandom(8 * m), dtype=np.uint64) / float(2**64)) if self._secure else self._rng.random(m)
        return u < q

    def _step(self, optimizer, original) -> None:
        """Add the sampled included canaries to the clipped sum, let the optimizer noise it, read it back."""
        import torch

        norm = self.cfg.norm if self.cfg.norm is not None else self.max_grad_norm
        # opacus' per-example clipping rule, applied to the canary's single non-zero coordinate.
        value = norm * min(1.0, self.max_grad_norm / (norm + 1e-6))
        present = self.included & self._sampled()
        known = []
        for p, idx, ids in self._slots:
            flat = p.summed_grad.view(-1)
            known.append(flat[idx].detach().double().numpy().copy())
            add = torch.as_tensor(present[ids] * value, dtype=flat.dtype)
            flat.index_add_(0, idx, add)
        claimed = optimizer.noise_multiplier
        if self.bug is not None:
            optimizer.noise_multiplier = claimed * self.bug.noise_scale
        try:
            original()
        finally:
            optimizer.noise_multiplier = claimed
        step = np.zeros(self.cfg.canaries)
        for (p, idx, ids), base in zip(self._slots, known):
            step[ids] = (p.grad.detach().reshape(-1)[idx].double().numpy() - base) / value
        self.scores.observe(step)
