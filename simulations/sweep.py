"""The privacy–utility table: one command runs every (mode, ε) configuration and tabulates them.

`run_sweep(SweepConfig(...))` runs `run_simulation` once per mode × ε (plus a non-private run per
mode), each into its own folder under `out/`, and skips a configuration whose results.json is
already complete, so an interrupted sweep resumes where it stopped. It then writes, from the
finished runs only:

- `table.md`: every baseline the runs report (most-frequent, Markov, and any other counting
  baseline in results.json), then one row per configuration: top-1/top-5, the global adapter,
  ε actually spent per device (max / median over devices), and top-1 per device group next to
  the best baseline of the same devices;
- `table.json`: the same numbers, machine-readable;
- `accuracy_vs_epsilon.png`: top-1 against ε, one line per mode, non-private and baselines as
  flat lines.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from simulations.config import BadSimulationConfig, SimulationConfig
from simulations.results import finished_results, load_results
from simulations.runner import run_simulation

TABLE_MD, TABLE_JSON, PLOT = "table.md", "table.json", "accuracy_vs_epsilon.png"
MODES = ("local", "federated")
# results.json's per-predictor keys (simulations.habit_sim): not baselines.
PREDICTOR_KEYS = ("habit_top1", "lora_top1", "combined_top1")
# Names for the baseline keys results.json carries ("<name>_top1"); an unknown key shows as-is.
BASELINE_NAMES = {
    "most_frequent": "most frequent",
    "markov": "per-user Markov",
    "hour": "hour-of-day frequency",
    "slot": "weekday × part-of-day frequency",
    "mix": "smoothed counting mix",
    "best_counting": "best counting (per owner)",
}


@dataclass
class SweepConfig:
    """Which configurations a sweep runs; `base` holds every other simulation setting."""

    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    modes: tuple[str, ...] = MODES
    non_private: bool = True  # also run each mode without DP (marked NON-PRIVATE in the table)
    local_rounds: Optional[int] = None  # local-only DP-SGD passes (default: base.rounds)
    out: str = "sweep-out"
    base: SimulationConfig = field(default_factory=SimulationConfig)

    def validate(self) -> None:
        """Raise BadSimulationConfig with one clear line for a setting out of range."""
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise BadSimulationConfig(f"--modes takes local and/or federated (got {','.join(self.modes) or 'none'})")
        for eps in self.epsilons:
            if not (eps > 0 and math.isfinite(eps)):
                raise BadSimulationConfig(f"--epsilons must be positive numbers (got {eps})")
        if not self.epsilons and not self.non_private:
            raise BadSimulationConfig("nothing to run: give --epsilons or --non-private")
        if self.local_rounds is not None and self.local_rounds < 1:
            raise BadSimulationConfig(f"--local-rounds must be at least 1 (got {self.local_rounds})")

    def runs(self) -> list[tuple[str, Optional[float]]]:
        """(mode, ε) for every configuration; ε None is the non-private run."""
        targets: list[Optional[float]] = sorted(set(self.epsilons))
        if self.non_private:
            targets.append(None)
        return [(mode, eps) for mode in self.modes for eps in targets]

    def run_config(self, mode: str, eps: Optional[float]) -> SimulationConfig:
        """The simulation settings of one configuration."""
        rounds = self.base.rounds if mode == "federated" else (self.local_rounds or self.base.rounds)
        privacy = dict(non_private=True) if eps is None else dict(non_private=False, epsilon=eps)
        return replace(self.base, mode=mode, rounds=rounds, out=str(run_dir(Path(self.out), mode, eps)), **privacy)


def run_dir(out: Path, mode: str, eps: Optional[float]) -> Path:
    """Where one configuration writes its results: OUT/<mode>-eps<ε> or OUT/<mode>-nonprivate."""
    return out / (f"{mode}-nonprivate" if eps is None else f"{mode}-eps{eps:g}")


def run_sweep(cfg: SweepConfig, show_progress: bool = False,
              log: Callable[[str], None] = lambda line: None) -> dict:
    """Run every configuration not yet complete, then write the table, its JSON and the plot."""
    from simulations.devices import FeatureCache

    cfg.validate()
    for mode, eps in cfg.runs():
        cfg.run_config(mode, eps).validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # The frozen-layer features of one population and base are the same in every configuration.
    cache = FeatureCache(out / f".feature-cache-{os.getpid()}", mem_bytes=1 << 30)
    try:
        for mode, eps in cfg.runs():
            where = run_dir(out, mode, eps)
            if finished_results(where) is not None:
                log(f"{where}: complete, skipped")
                continue
            log(f"{where}: running {mode}, " + ("NON-PRIVATE" if eps is None else f"ε = {eps:g}"))
            t0 = time.perf_counter()
            res = run_simulation(cfg.run_config(mode, eps), show_progress=show_progress, feature_cache=cache)
            log(f"{where}: top-1 {res['final']['top1']:.3f} in {time.perf_counter() - t0:.0f} s")
    finally:
        cache.clear_files()
    return write_table(cfg)


def write_table(cfg: SweepConfig) -> dict:
    """table.md, table.json and the plot from the finished configurations under cfg.out."""
    out = Path(cfg.out)
    runs = []
    for mode, eps in cfg.runs():
        path = run_dir(out, mode, eps) / "results.json"
        if path.exists():
            runs.append(run_row(mode, eps, load_results(path)))
    if not runs:
        raise BadSimulationConfig(f"no finished configuration under {out}: nothing to tabulate")
    first = load_results(run_dir(out, runs[0]["mode"], runs[0]["epsilon"]) / "results.json")
    table = {
        "dataset": first["config"]["dataset"],
        "devices": first["population"].get("devices"),
        "baselines": baseline_rows(first["baselines"]),
        "runs": runs,
    }
    (out / TABLE_JSON).write_text(json.dumps(table, indent=2, allow_nan=True) + "\n")
    (out / TABLE_MD).write_text(markdown(table))
    plot_sweep(table, out / PLOT)
    table["files"] = {"markdown": TABLE_MD, "json": TABLE_JSON, "plot": PLOT}
    return table


def baseline_rows(baselines: dict) -> list[dict]:
    """One row per baseline in results.json's `baselines` ("<name>_top1", "<name>_top5")."""
    names = [k[: -len("_top1")] for k in baselines if k.endswith("_top1")]
    return [{"key": n, "name": BASELINE_NAMES.get(n, n.replace("_", " ")),
             "top1": baselines[f"{n}_top1"], "top5": baselines.get(f"{n}_top5")} for n in names]


def run_row(mode: str, eps: Optional[float], res: dict) -> dict:
    """The numbers of one configuration, read from its results.json."""
    cfg, final, priv = res["config"], res.get("final") or {}, res.get("privacy", {})
    groups = {}
    for name, g in (res.get("groups") or {}).items():
        base = {k[: -len("_top1")]: v for k, v in g.items()
                if k.endswith("_top1") and k not in ("top1", "global_top1") + PREDICTOR_KEYS and v is not None}
        best = max(base, key=base.get) if base else None
        groups[name] = {"devices": g["devices"], "top1": g["top1"], "top5": g.get("top5"),
                        "habit_top1": g.get("habit_top1"), "lora_top1": g.get("lora_top1"),
                        "baselines": base, "best_baseline": best}
    spent = [d["epsilon"] for d in res.get("devices", []) if d.get("epsilon") is not None]
    return {
        "mode": mode, "epsilon": eps, "unit": cfg.get("epsilon_unit"), "private": eps is not None,
        "status": res.get("status"), "rounds": cfg.get("rounds"), "devices_per_round": cfg.get("devices_per_round"),
        "top1": final.get("top1"), "top5": final.get("top5"), "global_top1": final.get("global_top1"),
        "predictor": cfg.get("predictor", "lora"), "scorer_rounds": cfg.get("scorer_rounds"),
        "scorer_kept": ((res.get("habit_scorer") or {}).get("check") or {}).get("kept"),
        **{f"{name}_top{k}": final.get(f"{name}_top{k}") for name in ("habit", "lora", "combined") for k in (1, 5)},
        "epsilon_spent_max": max(spent) if spent else final.get("epsilon_max"),
        "epsilon_spent_median": final.get("epsilon_median"),
        "epsilon_spent_min": min(spent) if spent else None,
        "accountant": priv.get("accountant"), "delta": priv.get("delta"),
        "groups": groups, "wall_s": res.get("wall_s"),
    }


def _num(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _privacy_cell(run: dict) -> str:
    if not run["private"]:
        return "NON-PRIVATE (ε = ∞)"
    spent = run["epsilon_spent_max"]
    detail = f"spent max {spent:.2f}, median {run['epsilon_spent_median']:.2f}" if spent is not None else "nothing spent"
    return f"ε={run['epsilon']:g} {run['unit']}-level ({detail})"


def run_name(mode: str, predictor: str) -> str:
    """What a run trains, in words: the habit predictor fine-tunes nothing locally and trains nothing in local mode."""
    if mode == "local":
        return "local only"
    return "federated" if predictor == "habit" else "federated + local"


def rounds_cell(r: dict) -> str:
    """The rounds that ran: the scorer's DP-FedAvg rounds for `habit` (no LoRA round runs), none locally."""
    if r.get("predictor") == "habit":
        cell = "– (nothing trained)" if r["mode"] == "local" else f"{r.get('scorer_rounds')} scorer rounds"
        if r.get("scorer_kept") is not None:
            cell += ", check: kept" if r["scorer_kept"] else ", check: not kept (own counts)"
    else:
        cell = f"{r['rounds']}" + (f" × {r['devices_per_round']} devices" if r["devices_per_round"] else "")
    return cell if r["status"] == "complete" else f"{cell} ({r['status']})"


def markdown(table: dict) -> str:
    """The table as Markdown: baselines first, then every configuration, then groups."""
    lines = [f"# {table['dataset']}: privacy–utility table ({table['devices']} devices)", "",
             "Macro mean over devices of top-k accuracy on each device's held-out events (the last 20%).", "",
             "top-1/top-5 is the run's personalized suggestion (its predictor); habit = the habit scorer "
             "(federated, DP-FedAvg) or the device's own counts (local); LoRA = the personal LoRA model alone.", "",
             "| model | privacy | rounds | top-1 | top-5 | habit top-1 | habit top-5 | LoRA top-1 | global adapter top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in table["baselines"]:
        lines.append(f"| {b['name']} (baseline) | – | | {_num(b['top1'])} | {_num(b['top5'])} | | | | |")
    for r in table["runs"]:
        name = f"{run_name(r['mode'], r.get('predictor', 'lora'))} ({r.get('predictor', 'lora')})"
        rounds = rounds_cell(r)
        lines.append(f"| {name} | {_privacy_cell(r)} | {rounds} | {_num(r['top1'])} | {_num(r['top5'])} | "
                     f"{_num(r.get('habit_top1'))} | {_num(r.get('habit_top5'))} | {_num(r.get('lora_top1'))} | "
                     f"{_num(r['global_top1'])} |")
    group_names = sorted({g for r in table["runs"] for g in r["groups"]})
    if group_names:
        lines += ["", "Top-1 per device group (best baseline: the strongest baseline on the same devices):", "",
                  "| model | privacy | " + " | ".join(f"{g} top-1 | {g} best baseline" for g in group_names) + " |",
                  "|---|---|" + "---|---|" * len(group_names)]
        for r in table["runs"]:
            cells = []
            for g in group_names:
                grp = r["groups"].get(g)
                if grp is None:
                    cells += ["", ""]
                    continue
                best = grp["best_baseline"]
                best_cell = f"{_num(grp['baselines'][best])} ({BASELINE_NAMES.get(best, best)})" if best else ""
                cells += [f"{_num(grp['top1'])} (n={grp['devices']})", best_cell]
            lines.append(f"| {run_name(r['mode'], r.get('predictor', 'lora'))} | {_privacy_cell(r)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(table: dict, path: Path) -> Path:
    """Top-1 against ε (log scale): a line per mode, non-private and baselines as flat lines."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=100)
    for mode, marker in (("local", "o"), ("federated", "s")):
        pts = sorted((r["epsilon"], r["top1"]) for r in table["runs"]
                     if r["mode"] == mode and r["private"] and r["top1"] is not None)
        name = "local only" if mode == "local" else "federated + local"
        line = None
        if pts:
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker + "-", label=f"{name} (DP)")
        for r in table["runs"]:
            if r["mode"] == mode and not r["private"] and r["top1"] is not None:
                ax.axhline(r["top1"], linestyle="--", color=line.get_color() if line else None,
                           label=f"{name}, non-private")
    styles = iter(((":", "0.1"), ("-.", "0.1"), (":", "0.55"), ("-.", "0.55"), ((0, (1, 4)), "0.1"), ((0, (5, 4)), "0.4")))
    for b in table["baselines"]:
        style, grey = next(styles, (":", "0.7"))
        ax.axhline(b["top1"], linestyle=style, color=grey, label=f"{b['name']} (baseline)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    eps = sorted({r["epsilon"] for r in table["runs"] if r["private"]})
    if eps:
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.set_xlabel("ε per device (user-level federated, record-level local)")
    ax.set_ylabel("top-1 accuracy (held-out events)")
    ax.set_title(f"{table['dataset']}: accuracy vs privacy")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
