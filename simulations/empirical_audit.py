"""`homebody audit empirical`: a one-run empirical privacy audit of real opacus DP-SGD.

Following Steinke, Nasr & Jagielski (2023): ``m`` canaries (random inputs with random labels,
the examples a model can only fit by memorising them) are each included in the training set
with probability 1/2; one small MLP is trained once with opacus DP-SGD (Poisson sampling,
per-example clipping, Gaussian noise calibrated by privacy/ to the target epsilon); each canary
is scored by its loss, and privacy/empirical.py turns the membership guesses into a lower bound
on epsilon at a stated confidence. A lower bound above the accountant's epsilon means the
training does not keep its promise (e.g. a bug dropped the noise).

``--white-box`` runs the white-box form instead (``run_whitebox_audit``): Dirac gradient canaries
inside the real local DP-SGD (``personal.training.train_adapter`` with ``personal.audit_hook``),
every step's noisy gradient observed, and two readings from ``privacy/whitebox.py`` next to the
claimed epsilon: the Steinke–Nasr–Jagielski lower bound and a Gaussian-shape estimate.

It lives on the top floor because it holds model code; the maths stays in privacy/.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from privacy.errors import HomebodyError


class AuditConfigError(HomebodyError):
    """The empirical-audit settings cannot work."""


@dataclass(frozen=True)
class EmpiricalAuditConfig:
    """Data, model and DP-SGD settings of one audit run.

    ``epsilon`` is the privacy the run claims (noise is calibrated to it); ``noise=False``
    switches the noise off while keeping the claim, as a bug would. ``epsilon=None`` with
    ``noise=False`` is a plain non-private run with no claim.
    """

    epsilon: float | None = 1.0
    noise: bool = True
    delta: float = 1e-5
    canaries: int = 1000
    examples: int = 1000
    dim: int = 256
    classes: int = 10
    hidden: int = 64
    epochs: int = 15
    batch_size: int = 100
    lr: float = 2.0
    max_grad_norm: float = 1.0
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise and self.epsilon is None:
            raise AuditConfigError("a noisy run needs a target epsilon (or switch the noise off)")
        if self.epsilon is not None and not (0 < self.epsilon < math.inf):
            raise AuditConfigError(f"epsilon must be a finite number > 0, got {self.epsilon!r}")
        if self.canaries < 2 or self.examples < 0 or self.epochs < 1 or self.batch_size < 1:
            raise AuditConfigError("need canaries >= 2, examples >= 0, epochs >= 1, batch size >= 1")
        if self.classes < 2 or self.dim < 1 or self.hidden < 1:
            raise AuditConfigError("need classes >= 2, dim >= 1, hidden >= 1")
        if not (0 < self.confidence < 1) or not (0 < self.delta < 1):
            raise AuditConfigError("confidence and delta must be in (0, 1)")
        if self.max_grad_norm <= 0 or self.lr <= 0:
            raise AuditConfigError("max grad norm and learning rate must be > 0")


@dataclass
class EmpiricalAuditReport:
    """What one run measured."""

    config: dict
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant_epsilon: float | None  # None when the noise is off (epsilon = inf)
    claimed_epsilon: float | None
    epsilon_lower: float
    claim_fails: bool
    guesses: int
    correct: int
    included: int
    member_loss: float
    nonmember_loss: float
    test_accuracy: float  # on held-out ordinary examples: what the model is for
    seconds: float
    audit: dict = field(default_factory=dict)

    def verdict(self) -> str:
        """One line for humans."""
        lb = f"empirical lower bound epsilon >= {self.epsilon_lower:.3f} ({self.config['confidence']:.0%} confidence)"
        if self.claimed_epsilon is None:
            return f"{lb}; no DP claim was made"
        if self.claim_fails:
            return f"CLAIM FAILS: {lb} exceeds the claimed epsilon {self.claimed_epsilon:g}"
        return f"consistent with the claim: {lb} <= claimed epsilon {self.claimed_epsilon:g}"


def _make_data(cfg: EmpiricalAuditConfig):
    """Ordinary examples (a Gaussian mixture) and canaries (random inputs, random labels)."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    means = torch.randn(cfg.classes, cfg.dim, generator=g) * 1.5
    y = torch.randint(0, cfg.classes, (cfg.examples,), generator=g)
    x = means[y] + torch.randn(cfg.examples, cfg.dim, generator=g)
    cx = torch.randn(cfg.canaries, cfg.dim, generator=g) * 2.0
    cy = torch.randint(0, cfg.classes, (cfg.canaries,), generator=g)
    included = torch.rand(cfg.canaries, generator=g) < 0.5
    ty = torch.randint(0, cfg.classes, (1000,), generator=g)  # held-out ordinary examples: utility
    tx = means[ty] + torch.randn(1000, cfg.dim, generator=g)
    return x, y, cx, cy, included, tx, ty


def run_empirical_audit(cfg: EmpiricalAuditConfig, on_epoch: Optional[Callable[[int, int], None]] = None) -> EmpiricalAuditReport:
    """Train once with opacus DP-SGD on data + included canaries, score the canaries, bound epsilon."""
    import torch

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: more threads only add contention
    try:
        return _run(cfg, on_epoch, t0)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: EmpiricalAuditConfig, on_epoch: Optional[Callable[[int, int], None]], t0: float) -> EmpiricalAuditReport:
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from privacy.accountant import SubsampledGaussian, compute_epsilon, noise_for_epsilon
    from privacy.empirical import audit_from_scores

    torch.manual_seed(cfg.seed)
    x, y, cx, cy, included, tx, ty = _make_data(cfg)
    train_x, train_y = torch.cat([x, cx[included]]), torch.cat([y, cy[included]])
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=cfg.batch_size, shuffle=True)
    # opacus' Poisson loader samples each example with q = 1 / len(loader).
    q, steps = 1.0 / len(loader), cfg.epochs * len(loader)
    z = noise_for_epsilon(cfg.epsilon, q, steps, cfg.delta) if cfg.noise else 0.0
    model = torch.nn.Sequential(
        torch.nn.Linear(cfg.dim, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, cfg.classes)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure_mode; the audit needs reproducibility
        engine = PrivacyEngine(secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=z,
            max_grad_norm=cfg.max_grad_norm, poisson_sampling=True,
        )
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for epoch in range(cfg.epochs):
        for bx, by in loader:
            if len(bx) == 0:
                continue
            optimizer.zero_grad()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "full backward hook ... no inputs require gradients"
                loss_fn(model(bx), by).backward()
            optimizer.step()
        if on_epoch:
            on_epoch(epoch + 1, cfg.epochs)
    model.eval()
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(cx), cy, reduction="none")
        acc = (model(tx).argmax(1) == ty).float().mean().item()
    res = audit_from_scores((-losses).tolist(), included.tolist(), cfg.delta, cfg.confidence)
    eps_acc = compute_epsilon([SubsampledGaussian(z, q, steps)], cfg.delta) if cfg.noise else math.inf
    claimed = cfg.epsilon
    return EmpiricalAuditReport(
        config=asdict(cfg), noise_multiplier=z, sample_rate=q, steps=steps,
        accountant_epsilon=eps_acc if math.isfinite(eps_acc) else None, claimed_epsilon=claimed,
        epsilon_lower=res.epsilon_lower, claim_fails=res.claim_fails(claimed), guesses=res.guesses,
        correct=res.correct, included=int(included.sum()),
        member_loss=float(losses[included].mean()), nonmember_loss=float(losses[~included].mean()),
        test_accuracy=acc, seconds=time.perf_counter() - t0, audit=res.to_dict(),
    )


def empirical(
    epsilon: Optional[float] = typer.Option(None, "--epsilon", "-e", help="Claimed epsilon; the noise is calibrated to it (default 1 unless --no-noise)."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Switch the noise off (as a bug would). With --epsilon, the claim is still checked. Black-box form only."),
    white_box: bool = typer.Option(False, "--white-box", help="White-box form: gradient canaries in the real local DP-SGD, every noisy step observed (SNJ bound + Gaussian-shape estimate)."),
    canaries: Optional[int] = typer.Option(None, "--canaries", "-m", help="Number of canaries, each included with probability 1/2 (default 1000; white-box 20000)."),
    examples: Optional[int] = typer.Option(None, "--examples", help="Ordinary training examples (default 1000; white-box 64)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs (default 15; white-box 50)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Expected (Poisson) batch size (black-box form; default 100)."),
    sample_rate: Optional[float] = typer.Option(None, "--sample-rate", help="Poisson sample rate (white-box form; default 0.5)."),
    delta: float = typer.Option(1e-5, "--delta", help="Delta of the claim and of the audit."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence of the lower bound."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON here."),
) -> None:
    """One-run empirical audit (Steinke, Nasr & Jagielski 2023): a lower bound on epsilon beside the accountant's."""
    if white_box:
        if no_noise or batch_size is not None:
            raise AuditConfigError("--no-noise and --batch-size are for the black-box form (the white-box audit "
                                   "always runs the real noise, at --sample-rate)")
        wcfg = WhiteBoxAuditConfig(
            epsilon=1.0 if epsilon is None else epsilon, delta=delta, confidence=confidence, seed=seed,
            **{k: v for k, v in (("canaries", canaries), ("examples", examples), ("epochs", epochs),
                                 ("sample_rate", sample_rate)) if v is not None})
        _print_whitebox(wcfg, json_path)
        return
    from rich.console import Console
    from rich.progress import Progress

    if epsilon is None and not no_noise:
        epsilon = 1.0
    if sample_rate is not None:
        raise AuditConfigError("--sample-rate is for the white-box form (the black-box form takes --batch-size)")
    if epochs is not None and not float(epochs).is_integer():
        raise AuditConfigError(f"--epochs must be a whole number in the black-box form, got {epochs:g}")
    cfg = EmpiricalAuditConfig(epsilon=epsilon, noise=not no_noise, delta=delta,
                               canaries=1000 if canaries is None else canaries,
                               examples=1000 if examples is None else examples, epochs=15 if epochs is None else int(epochs),
                               batch_size=100 if batch_size is None else batch_size, confidence=confidence, seed=seed)
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training with opacus DP-SGD", total=cfg.epochs)
        rep = run_empirical_audit(cfg, on_epoch=lambda done, total: progress.update(task, completed=done))
    acc = "inf (no noise)" if rep.accountant_epsilon is None else f"{rep.accountant_epsilon:.4f}"
    console.print(
        f"noise multiplier {rep.noise_multiplier:.4f}, sample rate {rep.sample_rate:.4f}, {rep.steps} steps, "
        f"delta {cfg.delta:g}; {rep.included}/{cfg.canaries} canaries included; "
        f"mean canary loss in {rep.member_loss:.3f} / out {rep.nonmember_loss:.3f}; "
        f"held-out accuracy {rep.test_accuracy:.3f}", highlight=False,
    )
    console.print(f"accountant epsilon (pld): {acc}", highlight=False)
    console.print(
        f"empirical lower bound:    {rep.epsilon_lower:.4f} at {cfg.confidence:.0%} confidence "
        f"({rep.correct} of {rep.guesses} guesses right)", highlight=False,
    )
    console.print(("[bold red]" if rep.claim_fails else "[green]") + rep.verdict() + "[/]", highlight=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(rep), indent=2))


def register(app: typer.Typer) -> None:
    """Add `audit empirical` to the `audit` group that privacy/cli.py owns."""
    from privacy.cli import audit_app

    audit_app.command("empirical")(empirical)


# -- white-box form ------------------------------------------------------------------------------

@dataclass(frozen=True)
class WhiteBoxAuditConfig:
    """One white-box audit run of the real local DP-SGD (``personal.training.train_adapter``).

    A tiny random-initialised base carries LoRA of rank ``lora_rank`` (enough trainable
    coordinates for ``canaries`` distinct Dirac canaries); ``examples`` ordinary examples are
    trained for ``epochs`` at Poisson sample rate ``sample_rate`` (steps = epochs / rate), the
    noise calibrated to ``epsilon`` at ``delta`` by the accountant.
    """

    epsilon: float = 4.0
    delta: float = 1e-5
    canaries: int = 20000
    examples: int = 64
    sample_rate: float = 0.5
    epochs: float = 50.0
    lora_rank: int = 128
    max_grad_norm: float = 1.0
    confidence: float = 0.95
    model: str = "tiny"
    seed: int = 0  # canaries, examples and model init; the DP noise only with noise_rng="seeded"
    # The DP-SGD noise and Poisson sampling: the OS CSPRNG, as every real release draws them. "seeded"
    # (from `seed`) makes a run reproducible: for tests that assert on one run's statistics.
    noise_rng: str = "os-csprng"

    def __post_init__(self) -> None:
        if not (0 < self.epsilon < math.inf):
            raise AuditConfigError(f"epsilon must be a finite number > 0, got {self.epsilon!r}")
        if self.noise_rng not in ("os-csprng", "seeded"):
            raise AuditConfigError(f"noise_rng must be 'os-csprng' or 'seeded', got {self.noise_rng!r}")
        if self.canaries < 4 or self.examples < 1 or self.epochs <= 0 or self.lora_rank < 1:
            raise AuditConfigError("need canaries >= 4, examples >= 1, epochs > 0, LoRA rank >= 1")
        if not (0 < self.sample_rate <= 1):
            raise AuditConfigError(f"sample rate must be in (0, 1], got {self.sample_rate!r}")
        if not (0 < self.confidence < 1) or not (0 < self.delta < 1) or self.max_grad_norm <= 0:
            raise AuditConfigError("confidence and delta must be in (0, 1), max grad norm > 0")


@dataclass
class WhiteBoxAuditReport:
    """What one white-box run measured, next to what it claimed."""

    config: dict
    claimed_epsilon: float
    accountant_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    included: int
    epsilon_lower: float  # Steinke–Nasr–Jagielski, distribution-free
    gaussian_epsilon: float  # Gaussian-shape point estimate
    gaussian_epsilon_lower: float  # its lower limit at the stated confidence (if the shape holds)
    gaussian_mu: float
    flagged: bool
    guesses: int
    correct: int
    seconds: float
    train_seconds: float
    injected_bug: dict | None = None  # only ever set by tests and benchmarks
    audit: dict = field(default_factory=dict)

    def verdict(self) -> str:
        """One line for humans."""
        c = self.config["confidence"]
        text = (f"SNJ lower bound epsilon >= {self.epsilon_lower:.3f} ({c:.0%}); Gaussian-shape estimate "
                f"{_fmt(self.gaussian_epsilon)} (>= {_fmt(self.gaussian_epsilon_lower)} at {c:.0%})")
        if self.flagged:
            return f"CLAIM FAILS: {text} against the claimed epsilon {self.claimed_epsilon:g}"
        return f"consistent with the claim: {text} <= claimed epsilon {self.claimed_epsilon:g}"


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}"


def _whitebox_examples(cfg: WhiteBoxAuditConfig):
    """Seeded ordinary examples (short texts over a few labels): the training the canaries ride on."""
    import random

    from personal.examples import Example

    rng = random.Random(cfg.seed)
    places = ["Gym", "Office", "Coffee Shop", "Park"]
    words = ["monday", "tuesday", "morning", "evening", "after", "work", "home", "rain", "sun", "late"]
    out = [Example(" ".join(rng.choice(words) for _ in range(6)), rng.choice(places)) for _ in range(cfg.examples)]
    return out, places


def run_whitebox_audit(cfg: WhiteBoxAuditConfig, *, _test_only_bug=None,
                       progress: Optional[Callable[[int, int, float], None]] = None) -> WhiteBoxAuditReport:
    """Train once with canaries in every step, score them, and read the scores both ways (privacy/whitebox.py).

    ``_test_only_bug`` (a ``personal.audit_hook.InjectedBug``) plants a leak the claim does not
    cover; the CLI never passes it.
    """
    import torch

    from personal.adapter import LoraSettings
    from personal.audit_hook import CanaryConfig, GradientCanaryAudit
    from personal.models import load_base
    from personal.training import DPConfig, TrainConfig, train_adapter
    from privacy.whitebox import whitebox_audit

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only add contention
    try:
        base = load_base(cfg.model)
        examples, labels = _whitebox_examples(cfg)
        tcfg = TrainConfig(lora=LoraSettings(r=cfg.lora_rank, alpha=cfg.lora_rank), epochs=cfg.epochs,
                           sample_rate=cfg.sample_rate, lr=1e-3, optimizer="sgd", max_length=16, seed=cfg.seed)
        dp = DPConfig(epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm, rng=cfg.noise_rng)
        hook = GradientCanaryAudit(CanaryConfig(canaries=cfg.canaries, seed=cfg.seed), _test_only_bug=_test_only_bug)
        t1 = time.perf_counter()
        res = train_adapter(base, examples, labels, tcfg, dp, audit=hook, progress=progress)
        train_s = time.perf_counter() - t1
    finally:
        torch.set_num_threads(threads)
    wb = whitebox_audit(hook.scores.total, hook.included, cfg.delta, cfg.confidence, claimed_epsilon=cfg.epsilon)
    m = res.mechanism
    bug = None if _test_only_bug is None else asdict(_test_only_bug)
    return WhiteBoxAuditReport(
        config=asdict(cfg), claimed_epsilon=cfg.epsilon, accountant_epsilon=float(res.epsilon),
        noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate, steps=m.steps,
        included=int(hook.included.sum()), epsilon_lower=wb.snj.epsilon_lower,
        gaussian_epsilon=wb.gaussian.epsilon, gaussian_epsilon_lower=wb.gaussian.epsilon_lower,
        gaussian_mu=wb.gaussian.mu, flagged=wb.flagged, guesses=wb.snj.guesses, correct=wb.snj.correct,
        seconds=time.perf_counter() - t0, train_seconds=train_s, injected_bug=bug, audit=wb.to_dict(),
    )


def _print_whitebox(cfg: WhiteBoxAuditConfig, json_path: Optional[Path]) -> None:
    """Run the white-box audit with a progress bar; print the readings next to the claim; write JSON."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("DP-SGD with gradient canaries", total=None)
        rep = run_whitebox_audit(cfg, progress=lambda done, total, loss: progress.update(task, completed=done, total=total))
    console.print(
        f"noise multiplier {rep.noise_multiplier:.4f}, sample rate {rep.sample_rate:.4f}, {rep.steps} steps, "
        f"delta {cfg.delta:g}; {rep.included}/{cfg.canaries} gradient canaries included; every step observed",
        highlight=False,
    )
    console.print(f"claimed epsilon:            {rep.claimed_epsilon:g} (accountant, pld: {rep.accountant_epsilon:.4f})",
                  highlight=False)
    console.print(f"SNJ lower bound:            {rep.epsilon_lower:.4f} at {cfg.confidence:.0%} confidence "
                  f"({rep.correct} of {rep.guesses} guesses right)", highlight=False)
    console.print(f"Gaussian-shape estimate:    {_fmt(rep.gaussian_epsilon)} (mu {_fmt(rep.gaussian_mu)}); "
                  f">= {_fmt(rep.gaussian_epsilon_lower)} at {cfg.confidence:.0%} if the shape holds", highlight=False)
    console.print(("[bold red]" if rep.flagged else "[green]") + rep.verdict() + "[/]", highlight=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_json_safe(asdict(rep)), indent=2))


def _json_safe(obj):
    """inf/nan as strings: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
