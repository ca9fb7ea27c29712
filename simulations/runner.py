"""The simulation runner: load a population, hand it to an engine, write results, plots and report.

`run_simulation(cfg)` loads a population, computes the baselines, hands the devices to an
engine (fast or flower), and after every round rewrites `results.json` atomically
(`simulations.results`), so that an interrupted run (Ctrl-C) always leaves a consistent partial
result (`"status": "interrupted"`). At the end it writes the plots and the population privacy
report. Settings and round metrics live in `simulations.config`, so engines never import this
module; the names below are re-exported for callers that know them from here.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from simulations.config import ROUND_KEYS, BadSimulationConfig, RoundResult, SimulationConfig, epsilon_stats
from simulations.results import (RESULTS_FILE, SCHEMA_VERSION, finished_results, load_results, new_results,
                                 run_loop, write_results)

__all__ = ["BadSimulationConfig", "RESULTS_FILE", "ROUND_KEYS", "RoundResult", "SCHEMA_VERSION", "SimulationConfig",
           "epsilon_stats", "finished_results", "load_results", "new_results", "run_loop", "run_simulation",
           "write_results"]


def _progress(show: bool):
    """A Rich progress bar (or a silent stand-in) for the setup and the rounds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not show, transient=False)


def _new_line(bar):
    """progress(description, total) -> advance(n): a new line on the bar (total None: no count)."""
    def new(description: str, total: int | None):
        task = bar.add_task(description, total=total)
        return lambda n: bar.advance(task, n)
    return new


def _set_policies(devices, cfg: SimulationConfig) -> None:
    """Each device's budget policy: the run's target as the cap, at the run's delta (both units)."""
    from privacy.budget import BudgetPolicy

    if cfg.non_private:
        return
    for d in devices:
        with d.open_gate() as (_vault, gate):
            for unit in ("user", "record"):
                gate.set_policy(d.user, unit, BudgetPolicy(epsilon_cap=cfg.epsilon, delta=cfg.delta))


def _planted_summary(pop, devices, engine, max_events) -> dict | None:
    """Synthetic only: top-1 on held-out events a planted routine produced, model vs Markov."""
    from simulations.devices import markov_hits

    by_user = {d.user: d for d in pop.devices}
    kinds = ("weekly", "daily", "")
    model: dict[str, dict[str, list]] = {}  # predictor -> kind -> hits
    for d in devices:
        if d.test_kinds is None:
            continue
        hits = engine.personal_hits(d)
        if hits is None:  # the engine cannot tell (Flower keeps the personal adapters in its ClientApps)
            return None
        hits["markov"] = markov_hits(by_user[d.user], max_events)
        hits["best_counting"] = markov_hits(by_user[d.user], max_events, "best_counting")
        for name, per_query in hits.items():
            for kind, h in zip(d.test_kinds, per_query):
                model.setdefault(name, {k: [] for k in kinds})[kind].append(h)
    if not model or (not model["personalized"]["weekly"] and not model["personalized"]["daily"]):
        return None
    names = {"weekly": "weekly_routines", "daily": "daily_schedule", "": "unplanned"}
    out = {}
    for k in kinds:
        row = {"events": len(model["personalized"][k])}
        for name, by_kind in model.items():
            row[f"{name}_top1"] = sum(by_kind[k]) / max(1, len(by_kind[k]))
        out[names[k]] = row
    return out


def _groups(rows: list[dict], per_user_base: dict) -> dict:
    """Mean metrics per device group (cold-start vs rest), with the baselines of the same devices."""
    out = {}
    for group in sorted({r["group"] for r in rows}):
        sel = [r for r in rows if r["group"] == group and r.get("top1") is not None]
        if not sel:
            continue
        users = [r["user"] for r in sel]
        out[group] = {
            "devices": len(sel),
            "top1": statistics.fmean(r["top1"] for r in sel),
            "top5": statistics.fmean(r["top5"] for r in sel),
            "global_top1": statistics.fmean(r["global_top1"] for r in sel) if all(r.get("global_top1") is not None for r in sel) else None,
            **{f"{name}_top{k}": statistics.fmean(r[f"{name}_top{k}"] for r in sel)
               for name in ("habit", "lora", "combined") for k in (1, 5)
               if all(r.get(f"{name}_top{k}") is not None for r in sel)},
            **{f"{name}_top1": statistics.fmean(per_user_base[u][name]["top1"] for u in users)
               for name in per_user_base[users[0]]},  # every counting baseline (personal.evaluate.BASELINES)
        }
    return out


def _privacy_report(engine, devices, cfg: SimulationConfig, out_dir: Path, empirical: dict | None = None) -> dict | None:
    """The population privacy audit report (privacy.report) from every device's own ledger (the engine knows where)."""
    from privacy.report import population_report

    accountant, summaries = engine.ledger_summaries()
    population_report(summaries, out_dir / "privacy_report.html", out_dir / "privacy_report.json",
                      title=f"homebody simulation: {cfg.dataset}, {len(devices)} devices ({cfg.epsilon_unit}-level)",
                      empirical=empirical)
    return {"html": "privacy_report.html", "json": "privacy_report.json", "accountant": accountant}


def run_simulation(cfg: SimulationConfig, show_progress: bool = False, feature_cache=None) -> dict:
    """Run one simulation end to end and return the results dict (also written to cfg.out/results.json).

    `feature_cache` (a `simulations.devices.FeatureCache`) lets a caller that runs several
    configurations on the same devices and base compute the frozen-layer features only once.
    """
    from simulations import devices as simdev
    from simulations.engines import make_engine
    from simulations.plots import write_plots
    from simulations.populations import load_population, select_devices, summary

    import torch

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    interrupted = False
    pop = load_population(cfg.dataset, data_dir=cfg.data_dir, synthetic_devices=cfg.synthetic_devices, seed=cfg.seed)
    pop = select_devices(pop, cfg.devices, sample=cfg.sample, seed=cfg.seed, cold_start=cfg.cold_start_devices)
    if len(pop.labels()) < 2:
        # e.g. shakespeare: every event is a text "line"; its text personalization has no next-event metric here
        raise BadSimulationConfig(f"{pop.name}: fewer than 2 distinct events, so there is no next event to predict "
                                  "(text-only populations load, but the runner scores next-event prediction only)")
    base_means, per_user_base = simdev.baselines(pop, cfg.max_events)
    with _progress(show_progress) as bar:
        task = bar.add_task("sealing device vaults", total=len(pop.devices))
        devices = simdev.prepare_devices(pop, out_dir / "vaults", cfg.history, cfg.max_events,
                                         progress=lambda n: bar.advance(task, n), fast_kdf=cfg.fast_kdf)
        _set_policies(devices, cfg)
        labels = pop.labels()
        results = new_results(cfg, summary(pop), base_means)
        results["privacy"]["accountant"] = simdev.GATE_ACCOUNTANT
        engine = make_engine(cfg, devices, labels, out_dir, tick=lambda n: bar.advance(task, n), cache=feature_cache)
        try:
            engine.prepare(results, _new_line(bar))
            results["timing"] = {"setup_s": time.perf_counter() - t_start}
            task = bar.add_task("round 1", total=engine.devices_per_round)
            rounds = cfg.rounds if cfg.trains_lora else 1  # --predictor habit: one evaluation, nothing trained

            def step(r: int) -> RoundResult:
                bar.reset(task, total=engine.devices_per_round,
                          description=f"round {r}/{rounds}" if cfg.trains_lora else "evaluating")
                return engine.round(r)

            try:
                run_loop(results, rounds, step, out_dir, done_status="finishing")
            except KeyboardInterrupt:
                interrupted = True
            results["devices"] = engine.device_rows()
            write_results(results, out_dir)
            results["groups"] = _groups(results["devices"], per_user_base)
            if not interrupted:
                results["planted"] = _planted_summary(pop, devices, engine, cfg.max_events)
            engine.finish(results)
        finally:
            engine.close()
    if not cfg.non_private:
        results["privacy"].update(_stated_epsilons(cfg, results))
    results["audit"] = _privacy_report(engine, devices, cfg, out_dir, results.get("canary_audit"))
    results["plots"] = write_plots(results, out_dir)
    results["wall_s"] = time.perf_counter() - t_start
    if not interrupted:
        results["status"] = "complete"  # only now: groups, audit and plots are in the file too
    write_results(results, out_dir)
    if interrupted:  # the partial result, its plots and report are written: now stop like Ctrl-C does
        raise KeyboardInterrupt
    return results


def _stated_epsilons(cfg: SimulationConfig, results: dict) -> dict:
    """The record- and user-level (epsilon, delta) the run used, stated plainly for the output."""
    final = results.get("final") or {}
    if cfg.mode == "federated" and not cfg.trains_lora:
        return {"user_epsilon": final.get("epsilon_max", 0.0), "record_epsilon": final.get("epsilon_max", 0.0),
                "record_note": ("user-level DP covers every record of a device, so the habit scorer's shared weights are "
                                "also record-level DP at the same epsilon; no adapter is trained (--predictor habit) and the "
                                "habit statistics are counted on the device: they never leave its vault")}
    if cfg.mode == "federated":
        return {
            "user_epsilon": final.get("epsilon_max", 0.0),
            "record_epsilon": final.get("epsilon_max", 0.0),
            "record_note": ("user-level DP covers every record of a device, so the shared adapter (and the habit "
                            "scorer's shared weights, when learnt) are also record-level DP at the same epsilon; the "
                            "personal adapter is fine-tuned on the device without DP-SGD and the habit statistics are "
                            "counted on the device: neither leaves its vault"),
        }
    if not cfg.trains_lora:
        return {"record_epsilon": final.get("epsilon_max", 0.0), "user_epsilon": None,
                "record_note": "local-only, --predictor habit: the device's own counts; nothing is trained or released"}
    return {"record_epsilon": final.get("epsilon_max", 0.0), "user_epsilon": None,
            "record_note": "local-only: nothing leaves the device; the local adapter is DP-SGD at record level"}
