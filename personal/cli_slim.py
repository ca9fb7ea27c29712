"""`homebody slim`: prune, distil and quantize a base into a slim folder (a thin layer over personal.slim).

The folder loads wherever a model name is accepted (``--model DIR``), and registered bases can be
slimmed on the fly by name (``--model smollm2-135m:int8``). torch/transformers are imported inside
the command so that ``homebody --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from privacy.errors import HomebodyError

console = Console()


def slim(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Base to slim: a registered name (smollm2-135m, minilm-l6, tiny...) or a float slim/HF folder."),
    out: Path = typer.Option(..., "--out", help="Folder to write the slim base into (config, tokenizer, weights, slim.json)."),
    quantize: str = typer.Option("none", "--quantize", help="Weights: int8, int4 (4-bit weight-only, CPU kernel) or none."),
    group_size: int = typer.Option(32, "--group-size", help="Group size of 4-bit quantization."),
    prune: float = typer.Option(0.0, "--prune", help="Fraction of MLP channels to remove (structured), e.g. 0.25."),
    prune_heads: int = typer.Option(0, "--prune-heads", help="Query heads to remove per KV group (Llama-like bases)."),
    prune_layers: int = typer.Option(0, "--prune-layers", help="Whole layers to remove (needs text: --data or --calibration)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Text for pruning scores: shakespeare_roles, sst2 or a .txt path (default: --data)."),
    distil_from: Optional[str] = typer.Option(None, "--distil-from", help="Teacher model: the (pruned) student learns to imitate it on --data."),
    data: Optional[str] = typer.Option(None, "--data", help="Distillation text: shakespeare_roles, sst2 or a .txt path."),
    distil_steps: int = typer.Option(100, "--distil-steps"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    max_length: int = typer.Option(64, "--max-length", help="Tokens per distillation example."),
    heldout: int = typer.Option(32, "--heldout", help="Held-out texts to measure perplexity per step (causal bases, when text is given; 0 = skip)."),
) -> None:
    """Slim a base for the device: structured pruning, distillation, int8/4-bit weights; writes a manifest."""
    if quantize not in ("int8", "int4", "none"):
        raise HomebodyError(f"--quantize must be int8, int4 or none, got {quantize!r}")
    if distil_from and not data:
        raise HomebodyError("--distil-from needs --data (the text the student learns on)")
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from personal.models import load_base
    from personal.slim.distil import DistilConfig
    from personal.slim.pipeline import SlimConfig, slim_to_folder
    from personal.slim.prune import PruneConfig
    from personal.slim.texts import HELDOUT, TRAIN, load_texts

    root = getattr(ctx.obj, "data_dir", None)
    source = calibration or data
    texts = load_texts(data, TRAIN, root=root) if data else None
    calib = load_texts(calibration, TRAIN, limit=256, root=root) if calibration else texts
    held = load_texts(source, HELDOUT, limit=heldout, root=root) if (source and heldout) else None
    cfg = SlimConfig(
        quantize=None if quantize == "none" else quantize,
        group_size=group_size,
        prune=PruneConfig(mlp=prune, heads=prune_heads, layers=prune_layers),
        distil=DistilConfig(steps=distil_steps, batch_size=batch_size, lr=lr, max_length=max_length) if distil_from else None,
    )
    if cfg.empty:
        raise HomebodyError("nothing to do: give --quantize int8|int4, --prune, --prune-heads, --prune-layers or --distil-from")
    with console.status(f"loading {model}"):
        base = load_base(model)
        teacher = load_base(distil_from) if distil_from else None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("slimming", total=None)

        def progress(stage: str, i: int, n: int) -> None:
            bar.update(task, description=stage, completed=i, total=n)

        manifest = slim_to_folder(base, cfg, out, teacher=teacher, texts=texts, calibration=calib, heldout=held,
                                  progress=progress)
    table = Table(title=f"slim base written to {out}")
    table.add_column("step")
    table.add_column("what was done")
    for step in manifest.steps:
        details = {k: v for k, v in step.items() if k != "step"}
        table.add_row(step["step"], ", ".join(f"{k}={v}" for k, v in details.items()))
    console.print(table)
    console.print(f"weights {manifest.weights_bytes / 1e6:.1f} MB, {manifest.parameters:,} stored values, "
                  f"sha256 {manifest.weights_sha256}")
    console.print(f"use it with: --model {out}")


def register(app: typer.Typer) -> None:
    """Add `homebody slim` to the root app."""
    app.command("slim")(slim)
