"""`homebody personalize | suggest | ask`: the model commands, a thin layer over the library.

torch/transformers are imported inside the commands (``homebody --help`` stays instant).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from personal.base_identity import DEFAULT_BASE, chat_partner
from personal.cli_common import KeyFile, VaultPath, console, err_console, open_vault
from personal.habits import DEFAULT_PREDICTOR
from personal.training import DEFAULT_EPSILON, DPConfig, TrainConfig
from privacy.errors import HomebodyError

MODEL_HELP = "Base model: minilm-l6, smollm2-135m, tiny, tiny-causal, or a local Hugging Face folder."
PREDICTOR_HELP = ("habit: your habit counts, ranked by the federation's shared weights when the vault has them, "
                  "the federation's usefulness check kept them and you have more than 16 events; "
                  "else your own best counting; "
                  "lora: your DP adapter; combined: both (habit alone, with a note, until an adapter is trained). "
                  f"Default: {DEFAULT_PREDICTOR}.")


class BadOption(HomebodyError):
    """Contradictory or malformed command-line options."""


def _layers_text(layers: tuple[int, ...] | None) -> str:
    """``--layers``' spelling of a LoRA layer set: comma-separated indices, or ``all``."""
    return "all" if layers is None else ",".join(str(i) for i in layers)


_LORA = TrainConfig().lora  # the options below default to the dataclasses' defaults (tests/test_defaults.py)


def _parse_at(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadOption(f"--at {value!r} is not an ISO time such as 2026-01-07T06:55") from None


def personalize(
    profile: str = typer.Option(..., "--profile", help="Whose events to learn from."),
    model: str = typer.Option(DEFAULT_BASE, "--model", help=MODEL_HELP),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help=f"Target epsilon of this run (default {DEFAULT_EPSILON:g} unless --noise-multiplier)."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", help="Use this noise multiplier instead of a target epsilon."),
    non_private: bool = typer.Option(False, "--non-private", help="Train WITHOUT differential privacy (for comparison; labelled as such)."),
    epochs: float = typer.Option(TrainConfig.epochs, "--epochs"),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", help="Expected batch size (Poisson sampling)."),
    lr: float = typer.Option(TrainConfig.lr, "--lr"),
    max_grad_norm: float = typer.Option(DPConfig.max_grad_norm, "--max-grad-norm", help="Per-example clipping bound."),
    rank: int = typer.Option(_LORA.r, "--rank", help="LoRA rank (alpha = 2 x rank)."),
    layers: Optional[str] = typer.Option(_layers_text(_LORA.layers), "--layers", help="LoRA layers, comma-separated (negative from the top); 'all' for every layer."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Train the profile's adapter with DP-LoRA: budget check → train → ledger → sealed adapter."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from personal.adapter import LoraSettings
    from personal.models import load_base
    from personal.personalize import personalize as run
    from personal.personalize import release_configs
    from personal.predict import default_use

    if non_private and (epsilon is not None or noise_multiplier is not None):
        raise BadOption("--non-private excludes --epsilon and --noise-multiplier")
    if epsilon is not None and noise_multiplier is not None:
        raise BadOption("give --epsilon or --noise-multiplier, not both")
    try:
        layer_set = None if layers in (None, "all") else tuple(int(x) for x in layers.split(","))
    except ValueError:
        raise BadOption(f"--layers {layers!r}: use comma-separated integers or 'all'") from None
    # delta: the profile's budget policy; noise and sampling: the OS CSPRNG
    cfg, dp = release_configs(epsilon, noise_multiplier, non_private, epochs=epochs, batch_size=batch_size, lr=lr,
                              max_grad_norm=max_grad_norm, lora=LoraSettings(r=rank, alpha=2 * rank, layers=layer_set))
    bar = Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=err_console)
    tasks: list = []

    def progress(step: int, total: int, loss: float) -> None:
        if not tasks:  # the bar appears with the first step, so a refusal stays one line
            bar.start()
            tasks.append(bar.add_task("train", total=total, loss=loss))
        bar.update(tasks[0], completed=step, total=total, loss=loss)

    with open_vault(vault, key_file) as v:
        base = load_base(model)
        try:
            out = run(v, profile, base, cfg, dp, progress=progress)
        except KeyboardInterrupt:
            bar.stop()
            err_console.print("interrupted: a checkpoint is sealed in the vault; run the same command to resume "
                              "(no budget is spent until the run completes)")
            raise
        finally:
            bar.stop()
        uses = default_use(v, profile, base.name)
    if out.resumed_from:
        console.print(f"resumed from step {out.resumed_from}")
    console.print(f"{profile}: adapter for {base.name} stored sealed in the vault "
                  f"({out.adapter.num_parameters():,} parameters, {out.adapter.nbytes():,} bytes, {len(out.adapter.labels)} labels)")
    console.print(out.privacy_label)
    if out.plan is None:
        console.print("[yellow]recorded in the ledger as a non-private release (epsilon = inf): "
                      "the budget gate refuses further private releases for this profile[/]")
    console.print(uses, highlight=False, markup=False)


def suggest(
    profile: str = typer.Option(..., "--profile"),
    at: Optional[str] = typer.Option(None, "--at", help="When (ISO, local time), default now."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many suggestions."),
    model: str = typer.Option(DEFAULT_BASE, "--model", help=MODEL_HELP + " Read only by the lora and combined predictors."),
    predictor: Optional[str] = typer.Option(None, "--predictor", help=PREDICTOR_HELP, show_default=False),
    habits: bool = typer.Option(False, "--habits", help="Deprecated: the same as --predictor habit."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """The top-k next events with probabilities, e.g. `Tue 08:10 — Coffee Shop 0.62, Subway 0.21`.

    The second line says which predictor ranked them and what was learnt under which DP.
    """
    from personal.habits import check_predictor
    from personal.predict import suggest_with

    when = _parse_at(at)
    if habits and predictor not in (None, "habit"):
        raise BadOption(f"--habits means --predictor habit; it contradicts --predictor {predictor}")
    chosen = check_predictor("habit" if habits else predictor)
    with open_vault(vault, key_file) as v:
        out = suggest_with(v, profile, model, when, k=top, predictor=chosen)
    console.print(out.line(), highlight=False)
    console.print(f"predictor {out.predictor} — {out.privacy}", style="dim", highlight=False, markup=False, soft_wrap=True)


def ask(
    question: str = typer.Argument(..., help="What to ask, e.g. 'what do I usually do on Friday evenings?'"),
    profile: str = typer.Option(..., "--profile"),
    model: str = typer.Option(chat_partner(DEFAULT_BASE), "--model", help=MODEL_HELP + " Loaded only when needed."),
    phrasing: str = typer.Option("template", "--phrasing", help="template: a plain sentence from the facts (instant); "
                                 "model: the language model rephrases it, checked against the facts."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the labelled answer to FILE and its signed manifest to FILE.manifest.json."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Answer a question from the owner's own events; the answer carries the AI-generated label.

    The facts come from the vault (and the personal model for "what next"); the manifest names them.
    `--save FILE` keeps the answer with its signed manifest (check it with `homebody label verify FILE`).
    """
    from personal.answers import AnswerConfig
    from personal.predict import ask as run

    AnswerConfig(phrasing=phrasing, max_new_tokens=max_new_tokens)  # a bad option fails before the vault opens
    with open_vault(vault, key_file) as v:
        out = run(v, profile, question, model, max_new_tokens=max_new_tokens, phrasing=phrasing)
    for note in out.notes:
        err_console.print(note, style="dim", highlight=False, markup=False)
    console.print(str(out.labelled), highlight=False, markup=False, soft_wrap=True)
    if save is not None:
        text_path, manifest_path = out.labelled.save(save)
        err_console.print(f"saved {text_path} and its signed manifest {manifest_path}")
    speed = f", {out.new_tokens} tokens generated ({out.tokens_per_s:.1f} tokens/s)" if out.new_tokens else ""
    err_console.print(f"[dim]answered in {out.seconds:.2f} s{speed}[/]")


def register(app: typer.Typer) -> None:
    """Add `personalize`, `suggest` and `ask` to the root app."""
    app.command("personalize")(personalize)
    app.command("suggest")(suggest)
    app.command("ask")(ask)
