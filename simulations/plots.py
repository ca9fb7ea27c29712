"""PNG plots drawn from a results dict (the content of results.json), nothing else.

Three figures: accuracy per round against the baselines, accuracy against epsilon, and the
distribution of epsilon across devices. Each is drawn only from numbers the run measured.
"""

from __future__ import annotations

import math
from pathlib import Path

PLOT_FILES = {
    "accuracy_per_round": "accuracy_per_round.png",
    "accuracy_vs_epsilon": "accuracy_vs_epsilon.png",
    "epsilon_distribution": "epsilon_distribution.png",
}


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    return plt, fig, ax


def _unit(results: dict) -> str:
    cfg = results.get("config", {})
    return f"{cfg.get('epsilon_unit', 'user')}-level ε" if cfg.get("private", True) else "non-private (ε = ∞)"


def plot_accuracy_per_round(results: dict, path: Path) -> Path:
    """Personalized top-1 (and global, habit-predictor and LoRA top-1) per round, with baselines as flat lines."""
    plt, fig, ax = _figure()
    rounds = results.get("rounds", [])
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["top1"] for r in rounds], "o-", label="personalized top-1")
    if any(r.get("global_top1") is not None for r in rounds):
        ax.plot(xs, [r.get("global_top1") for r in rounds], "s--", label="global adapter top-1")
    for key, style, name in (("habit_top1", "^-", "habit predictor top-1"), ("lora_top1", "v:", "LoRA model top-1")):
        if rounds and all(r.get(key) is not None for r in rounds):
            ax.plot(xs, [r[key] for r in rounds], style, label=name)
    base = results.get("baselines", {})
    for key, style, color, name in (("most_frequent_top1", ":", "grey", "most frequent"), ("markov_top1", "-.", "black", "Markov"),
                                    ("best_counting_top1", "--", "tab:red", "best counting")):
        if base.get(key) is not None:
            ax.axhline(base[key], linestyle=style, color=color, label=name)
    ax.set_xlabel("round")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel("top-1 accuracy (held-out events)")
    ax.set_title(f"{results.get('config', {}).get('dataset', '')}: accuracy per round")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_vs_epsilon(results: dict, path: Path) -> Path:
    """Top-1 against epsilon spent: the rounds of this run, and a sweep when results has one."""
    plt, fig, ax = _figure()
    rounds = [r for r in results.get("rounds", []) if r.get("epsilon_median") is not None]
    finite = [r for r in rounds if math.isfinite(r["epsilon_median"])]
    if finite:
        ax.plot([r["epsilon_median"] for r in finite], [r["top1"] for r in finite], "o-",
                label=f"this run (median {_unit(results)})")
        if all(r.get("habit_top1") is not None for r in finite):
            ax.plot([r["epsilon_median"] for r in finite], [r["habit_top1"] for r in finite], "^-",
                    label="habit predictor (this run)")
    for name, points in results.get("sweep", {}).items():
        pts = sorted((p["epsilon"], p["top1"]) for p in points if math.isfinite(p["epsilon"]))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--", label=name)
    base = results.get("baselines", {})
    if base.get("markov_top1") is not None:
        ax.axhline(base["markov_top1"], linestyle="-.", color="black", label="Markov")
    if base.get("best_counting_top1") is not None:
        ax.axhline(base["best_counting_top1"], linestyle="--", color="tab:red", label="best counting")
    if not finite and not results.get("sweep"):
        ax.text(0.5, 0.5, "non-private run: no finite ε", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("ε spent per device (median)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy against privacy cost")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_epsilon_distribution(results: dict, path: Path) -> Path:
    """Histogram of the final epsilon of each device."""
    plt, fig, ax = _figure()
    eps = [d["epsilon"] for d in results.get("devices", []) if d.get("epsilon") is not None]
    finite = [e for e in eps if math.isfinite(e)]
    if finite:
        ax.hist(finite, bins=min(30, max(5, len(finite) // 5)), color="tab:blue", edgecolor="white")
        ax.axvline(sorted(finite)[len(finite) // 2], color="black", linestyle="--", label="median")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"{len(eps)} devices, no finite ε (non-private run)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(_unit(results))
    ax.set_ylabel("devices")
    ax.set_title(f"ε across {len(eps)} devices")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(results: dict, out_dir: Path) -> dict[str, str]:
    """Draw the three PNGs into out_dir; returns {plot name: file name}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_accuracy_per_round(results, out_dir / PLOT_FILES["accuracy_per_round"])
    plot_accuracy_vs_epsilon(results, out_dir / PLOT_FILES["accuracy_vs_epsilon"])
    plot_epsilon_distribution(results, out_dir / PLOT_FILES["epsilon_distribution"])
    return dict(PLOT_FILES)
