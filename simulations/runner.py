"""The simulation runner: configuration, the round loop, results.json, and a clean Ctrl-C.

`run_simulation(cfg)` loads a population, computes the baselines, hands the devices to an
engine (fast or flower), and after every round rewrites `results.json` atomically, so that an
interrupted run (Ctrl-C) always leaves a consistent partial result (`"status": "interrupted"`).
At the end it writes the plots and the population privacy report.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from privacy.errors import HomebodyError

RESULTS_FILE = "results.json"
ROUND_KEYS = ("round", "top1", "top5", "global_top1", "epsilon_max", "epsilon_median", "bytes_up_per_device", "wall_s")
SCHEMA_VERSION = 1


class BadSimulationConfig(HomebodyError):
    """A simulation setting is out of range or inconsistent."""


@dataclass
class SimulationConfig:
    """Everything a simulation run depends on; the CLI builds it from flags and results.json records it."""

    dataset: str = "synthetic"
    devices: Optional[int] = 50
    sample: bool = False
    cold_start_devices: int = 0  # guarantee this many cold-start devices (<= 20 events) in the selection
    rounds: int = 5
    devices_per_round: Optional[int] = None  # None: all devices every round
    # With a sampled cohort each round evaluates only its cohort; this makes the LAST round evaluate
    # every device (federated: each fine-tunes the final global adapter), so `final` covers everyone.
    evaluate_all: bool = False
    epsilon: float = 8.0  # target per device for the whole run (user-level when federated, record-level when local)
    delta: float = 1e-5
    non_private: bool = False
    model: str = "minilm-l6"
    engine: str = "fast"  # fast | flower
    mode: str = "federated"  # federated | local
    # Where the federated noise is added (federation.config.MODES): "secagg" (default) = each device
    # adds sigma*C/sqrt(K) so the cohort's sum carries sigma*C, as under SecAgg+; "device" = each
    # device adds the full sigma*C (no trust in aggregation; far noisier sums); "central" = a trusted
    # server adds sigma*C to the sum of clipped updates.
    federation_mode: str = "secagg"
    out: str = "simulation-out"
    seed: int = 0
    local_epochs: int = 1  # local passes per device per round
    personal_epochs: int = 1  # local personalization passes on top of the global adapter (federated mode)
    batch_size: int = 16
    learning_rate: float = 5e-3
    clip_norm: float = 1.0  # per-example clip (DP-SGD)
    update_clip: float = 1.0  # per-device update clip C (federated)
    lora_rank: int = 8
    lora_layers: int = 1  # LoRA on the top N encoder layers: the rest is frozen and cached
    max_events: Optional[int] = None  # most recent events kept per device (None: all)
    history: int = 3
    synthetic_devices: int = 50
    data_dir: Optional[str] = None
    fast_kdf: bool = True  # per-device vaults use a fast scrypt setting: simulation only, recorded
    # torch intra-op threads. One is fastest for the small per-device ops whenever anything else
    # competes for the cores (2 threads then spin-wait: 100x slower measured); try 2 on an idle machine.
    threads: int = 1
    # Canary clients (federation/canary.py, issue 17): 0 = none, the global adapter is untouched by any.
    audit_canaries: int = 0
    # The habit scorer (personal.habits; simulations.habit_sim). Federated (fast engine): its shared
    # weights are learnt with user-level DP-FedAvg before the LoRA rounds, for `scorer_share` of the
    # user-level epsilon (the LoRA rounds get the rest: calibrated with the scorer's release as a
    # prior). Local: each device's own counts, no release.
    habit_scorer: bool = True
    scorer_share: float = 0.5
    scorer_rounds: int = 30
    scorer_cohort: int = 100
    scorer_clip: float = 0.5
    # The suggestion `top1`/`top5` report: "combined" (habit scores + combine_weight x the LoRA
    # model's log-probability), "habit" or "lora". combine_weight is fixed a priori, never tuned on held-out events.
    predictor: str = "combined"
    combine_weight: float = 1.0

    def validate(self) -> None:
        """Raise BadSimulationConfig with one clear line for any setting out of range."""
        if self.engine not in ("fast", "flower"):
            raise BadSimulationConfig(f"--engine must be 'fast' or 'flower' (got {self.engine!r})")
        if self.mode not in ("federated", "local"):
            raise BadSimulationConfig(f"--mode must be 'federated' or 'local' (got {self.mode!r})")
        if self.federation_mode not in ("secagg", "device", "central"):
            raise BadSimulationConfig(f"--federation-mode must be secagg, device or central (got {self.federation_mode!r})")
        if self.rounds < 1:
            raise BadSimulationConfig(f"--rounds must be at least 1 (got {self.rounds})")
        if self.devices is not None and self.devices < 1:
            raise BadSimulationConfig(f"--devices must be at least 1 (got {self.devices})")
        if self.cold_start_devices < 0:
            raise BadSimulationConfig(f"--cold-start must be 0 or more (got {self.cold_start_devices})")
        if self.devices_per_round is not None and self.devices_per_round < 1:
            raise BadSimulationConfig(f"--devices-per-round must be at least 1 (got {self.devices_per_round})")
        if not self.non_private and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise BadSimulationConfig(f"--epsilon must be a positive number (got {self.epsilon}); use --non-private for none")
        if not 0 < self.delta < 1:
            raise BadSimulationConfig(f"--delta must be in (0, 1) (got {self.delta})")
        if self.predictor not in ("combined", "habit", "lora"):
            raise BadSimulationConfig(f"--predictor must be combined, habit or lora (got {self.predictor!r})")
        if not 0 < self.scorer_share < 1:
            raise BadSimulationConfig(f"--scorer-share must be in (0, 1) (got {self.scorer_share})")
        if self.scorer_rounds < 1 or self.scorer_cohort < 1:
            raise BadSimulationConfig(f"--scorer-rounds and --scorer-cohort must be at least 1 "
                                      f"(got {self.scorer_rounds}, {self.scorer_cohort})")
        if not (self.scorer_clip > 0 and math.isfinite(self.scorer_clip)):
            raise BadSimulationConfig(f"--scorer-clip must be a positive number (got {self.scorer_clip})")
        if not (self.combine_weight >= 0 and math.isfinite(self.combine_weight)):
            raise BadSimulationConfig(f"--combine-weight must be 0 or more (got {self.combine_weight})")
        if self.threads < 1:
            raise BadSimulationConfig(f"--threads must be at least 1 (got {self.threads})")
        if self.audit_canaries and (self.audit_canaries < 2 or self.mode != "federated" or self.engine != "fast"
                                    or self.non_private):
            raise BadSimulationConfig("--audit-canaries needs K >= 2 and a private federated run on the fast engine")

    @property
    def epsilon_unit(self) -> str:
        """user-level for federated runs (the whole device), record-level for local-only runs (one event)."""
        return "user" if self.mode == "federated" else "record"

    def to_json(self) -> dict:
        d = asdict(self)
        d["epsilon_unit"] = self.epsilon_unit
        d["private"] = not self.non_private
        if self.non_private:
            d["epsilon"] = None
        d["kdf"] = "fast scrypt (simulation only)" if self.fast_kdf else "default scrypt"
        return d


@dataclass
class RoundResult:
    """The metrics of one round (the keys issue 6 names), plus free-form extras."""

    round: int
    top1: float
    top5: float
    global_top1: Optional[float]
    epsilon_max: float
    epsilon_median: float
    bytes_up_per_device: float
    wall_s: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ROUND_KEYS}
        d.update(self.extra)
        return d


def epsilon_stats(per_device: list[float]) -> tuple[float, float]:
    """(max, median) of the epsilon spent per device; inf for non-private runs, 0 when none spent."""
    if not per_device:
        return 0.0, 0.0
    return max(per_device), statistics.median(per_device)


def _json_safe(value):
    """JSON has no inf/nan: write them as the strings 'inf' / 'nan' (read back by `load_results`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _from_json(value):
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write_results(results: dict, out_dir: Path) -> Path:
    """Atomically (tmp file + rename) write results.json so a reader never sees half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(results), indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def load_results(path: Path) -> dict:
    """Read a results.json back, turning 'inf'/'nan' strings into floats."""
    return _from_json(json.loads(Path(path).read_text()))


def finished_results(out_dir: Path) -> dict | None:
    """The results of a run already complete in `out_dir`, or None (absent, running, interrupted)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return None
    results = load_results(path)
    return results if results.get("status") == "complete" else None


def new_results(cfg: SimulationConfig, population: dict, baselines: dict) -> dict:
    """The results skeleton written before the first round."""
    return {
        "schema": SCHEMA_VERSION,
        "status": "running",
        "config": cfg.to_json(),
        "population": population,
        "baselines": baselines,
        "rounds": [],
        "final": None,
        "devices": [],
        "privacy": {
            "unit": cfg.epsilon_unit,
            "delta": cfg.delta,
            "epsilon_target": None if cfg.non_private else cfg.epsilon,
            "private": not cfg.non_private,
            "note": "NON-PRIVATE comparison run" if cfg.non_private else f"DP on: {cfg.epsilon_unit}-level (ε, δ)",
        },
    }


def run_loop(results: dict, rounds: int, step: Callable[[int], RoundResult], out_dir: Path,
             progress: Callable[[int, RoundResult], None] | None = None, done_status: str = "complete") -> dict:
    """Run `step(r)` for r = 1..rounds, rewriting results.json after each round.

    On Ctrl-C the rounds finished so far stay, `status` becomes "interrupted" and `final` is the
    last finished round, so the file is a consistent partial result. After the last round the
    status is `done_status` (a caller that still adds results passes "finishing").
    """
    t0 = time.perf_counter()
    try:
        for r in range(1, rounds + 1):
            res = step(r)
            results["rounds"].append(res.to_json())
            results["final"] = res.to_json()
            results["wall_s"] = time.perf_counter() - t0
            write_results(results, out_dir)
            if progress:
                progress(r, res)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        results["wall_s"] = time.perf_counter() - t0
        write_results(results, out_dir)
        raise
    results["status"] = done_status
    results["wall_s"] = time.perf_counter() - t0
    write_results(results, out_dir)
    return results


def _progress(show: bool):
    """A Rich progress bar (or a silent stand-in) for the setup and the rounds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not show, transient=False)


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


def _privacy_report(devices, cfg: SimulationConfig, out_dir: Path, empirical: dict | None = None) -> dict | None:
    """The population privacy audit report (privacy.report) from every device's own ledger.

    Fast engine: the ledger in each device's vault. Flower engine: the per-device ledgers the
    federation's simulation keeps (none for a non-private run: every device is reported at inf).
    """
    import sqlite_utils
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from personal.vault import Vault
    from privacy.report import DeviceSummary, population_report
    from simulations.devices import GATE_ACCOUNTANT

    unit, summaries = cfg.epsilon_unit, []
    flower = out_dir / "flower-ledgers"
    accountant = "pld" if cfg.engine == "flower" else GATE_ACCOUNTANT
    for d in devices:
        if cfg.engine == "flower" and cfg.non_private:
            summaries.append(DeviceSummary(d.user, math.inf, cfg.delta, cfg.rounds, unit))
        elif cfg.engine == "flower":
            db = sqlite_utils.Database(flower / f"{d.user}.db")
            signer = Ed25519PrivateKey.from_private_bytes((flower / f"{d.user}.key").read_bytes())
            try:
                summaries.append(DeviceSummary.from_ledger(db, d.user, d.user, unit, accountant, signer=signer))
            finally:
                db.close()
        else:
            with Vault.open(d.vault_path, d.passphrase) as vault:
                summaries.append(DeviceSummary.from_ledger(vault.db, d.user, d.user, unit, accountant,
                                                           signer=vault.signing_key()))
    population_report(summaries, out_dir / "privacy_report.html", out_dir / "privacy_report.json",
                      title=f"homebody simulation: {cfg.dataset}, {len(devices)} devices ({unit}-level)",
                      empirical=empirical)
    return {"html": "privacy_report.html", "json": "privacy_report.json", "accountant": accountant}


def run_simulation(cfg: SimulationConfig, show_progress: bool = False, feature_cache=None) -> dict:
    """Run one simulation end to end and return the results dict (also written to cfg.out/results.json).

    `feature_cache` (a `simulations.devices.FeatureCache`) lets a caller that runs several
    configurations on the same devices and base compute the frozen-layer features only once.
    """
    from simulations import devices as simdev
    from simulations.engine_fast import FastEngine, check_engine
    from simulations.plots import write_plots
    from simulations.populations import load_population, select_devices, summary

    import torch

    cfg.validate()
    check_engine(cfg)
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
                                         progress=lambda n: bar.advance(task, n))
        _set_policies(devices, cfg)
        labels = pop.labels()
        results = new_results(cfg, summary(pop), base_means)
        results["privacy"]["accountant"] = simdev.GATE_ACCOUNTANT
        if cfg.engine == "flower":
            from simulations.engine_flower import run_flower

            task = bar.add_task(f"Flower simulation ({cfg.rounds} rounds)", total=None)
            results = run_flower(cfg, devices, labels, results, out_dir)
            results["habit_scorer"] = {"kind": "not run: the Flower engine trains the LoRA adapter only (use --engine fast)"}
            engine = None
        else:
            engine = FastEngine(cfg, devices, labels, out_dir / ".feature-cache",
                                tick=lambda n: bar.advance(task, n), cache=feature_cache)
            results["privacy"]["noise_multiplier"] = engine.fcfg.noise_multiplier if cfg.mode == "federated" else None
            results["habit_scorer"] = _habit_scorer(cfg, engine, bar)
            if engine.scorer_plan is not None:
                results["privacy"]["budget_split"] = _budget_split(cfg, engine)
            results["timing"] = {"setup_s": time.perf_counter() - t_start}
            per_round = len(engine.cohort()) if cfg.devices_per_round else len(devices)
            task = bar.add_task("round 1", total=per_round)

            def step(r: int) -> RoundResult:
                bar.reset(task, total=per_round, description=f"round {r}/{cfg.rounds}")
                return engine.round(r)

            try:
                run_loop(results, cfg.rounds, step, out_dir, done_status="finishing")
            except KeyboardInterrupt:
                interrupted = True
            results["devices"] = engine.device_rows()
            write_results(results, out_dir)
    if engine is not None:
        results["groups"] = _groups(results["devices"], per_user_base)
        if not interrupted:
            results["planted"] = _planted_summary(pop, devices, engine, cfg.max_events)
        results["timing"].update(_throughput(results, engine))
        if cfg.audit_canaries:
            results["canary_audit"] = engine.canary_estimate()
        engine.close()
    if not cfg.non_private:
        results["privacy"].update(_stated_epsilons(cfg, results))
    results["audit"] = _privacy_report(devices, cfg, out_dir, results.get("canary_audit"))
    results["plots"] = write_plots(results, out_dir)
    results["wall_s"] = time.perf_counter() - t_start
    if not interrupted:
        results["status"] = "complete"  # only now: groups, audit and plots are in the file too
    write_results(results, out_dir)
    if interrupted:  # the partial result, its plots and report are written: now stop like Ctrl-C does
        raise KeyboardInterrupt
    return results


def _habit_scorer(cfg: SimulationConfig, engine, bar) -> dict:
    """Federated: run the habit scorer's DP-FedAvg (a progress line per round); what results.json says about it."""
    if engine.runs_scorer:
        task = bar.add_task(f"habit scorer: DP-FedAvg, {cfg.scorer_rounds} rounds", total=cfg.scorer_rounds)
        return {"kind": "federated", "predictor": cfg.predictor, "combine_weight": cfg.combine_weight,
                **engine.train_scorer(lambda r: bar.advance(task, 1))}
    kind = "own counts (smoothed mix), no release" if cfg.mode == "local" else "off"
    return {"kind": kind, "predictor": cfg.predictor, "combine_weight": cfg.combine_weight}


def _budget_split(cfg: SimulationConfig, engine) -> dict:
    """The user-level budget split between the habit scorer and the LoRA rounds, as the accountant states it."""
    from federation.device import round_mechanism
    from privacy.accountant import compute_epsilon
    from simulations.devices import GATE_ACCOUNTANT

    if cfg.non_private:
        return {"habit_scorer": None, "lora": None, "total": None}
    prior = list(engine.scorer_plan.prior)
    k = min(len(engine.devices), cfg.devices_per_round or len(engine.devices))
    lora = round_mechanism(engine.fcfg, k / len(engine.devices), cfg.rounds)
    return {"habit_scorer": compute_epsilon(prior, cfg.delta, GATE_ACCOUNTANT),
            "lora": compute_epsilon([lora], cfg.delta, GATE_ACCOUNTANT),
            "total": compute_epsilon(prior + [lora], cfg.delta, GATE_ACCOUNTANT),
            "note": (f"the habit scorer's noise is calibrated for {cfg.scorer_share:g} x ε, then the LoRA rounds' noise "
                     "for the whole ε with the scorer's release as a prior: every ledger composes both")}


def _throughput(results: dict, engine) -> dict:
    """Device-rounds per minute over the rounds, and the training share of the time."""
    rounds_s = sum(r["wall_s"] for r in results["rounds"])
    device_rounds = sum(r.get("sampled", r.get("devices_evaluated", 0)) for r in results["rounds"])
    return {"rounds_s": rounds_s, "device_rounds": device_rounds,
            "device_rounds_per_min": 60 * device_rounds / rounds_s if rounds_s else None,
            "train_s": engine.train_seconds, "encode_s": engine.encode_seconds,
            "examples_trained": engine.train_examples_seen,
            "feature_cache": {"hits": engine.cache.hits, "misses": engine.cache.misses}}


def _stated_epsilons(cfg: SimulationConfig, results: dict) -> dict:
    """The record- and user-level (epsilon, delta) the run used, stated plainly for the output."""
    final = results.get("final") or {}
    if cfg.mode == "federated":
        return {
            "user_epsilon": final.get("epsilon_max", 0.0),
            "record_epsilon": final.get("epsilon_max", 0.0),
            "record_note": ("user-level DP covers every record of a device, so the shared adapter (and the habit "
                            "scorer's shared weights, when learnt) are also record-level DP at the same epsilon; the "
                            "personal adapter is fine-tuned on the device without DP-SGD and the habit statistics are "
                            "counted on the device: neither leaves its vault"),
        }
    return {"record_epsilon": final.get("epsilon_max", 0.0), "user_epsilon": None,
            "record_note": "local-only: nothing leaves the device; the local adapter is DP-SGD at record level"}
