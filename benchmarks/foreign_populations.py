"""Populations homebody's code did not generate, and how private personalization does on them (issue 14, acc. 3).

Part 1, the generator (this file's first half). It is written independently of
`simulations/populations.py` (nothing imported from it, no routine copied) and uses other habit
models, numpy's PCG64 generator and per-owner UTC offsets:

- `shift_workers`: a work schedule that rotates early / late / night every one or two weeks,
  with rest days, wide time jitter, skipped logs and heavy unanchored noise (hour of day is
  misleading across rotations; the order of a shift's events is not);
- `app_sessions`: phone app sessions; inside a session the next app follows the owner's Markov
  chain, which blends a day matrix and a night matrix by the hour (the blend's peak drifts from
  week to week), with bursty repeats of the same app;
- `iid_zipf`: NO time or order structure at all: every event is an independent draw from the
  owner's own Zipf frequency over a personal subset of a shared vocabulary (plus a few private
  names), at a uniformly random time. Counting is all there is, and most-frequent is optimal;
- `sparse_private`: few-event owners (6-40 events) whose vocabulary is mostly private names,
  each private name with a loose preferred weekday and hour.

Every seed and parameter is fixed below, a priori (see `SPECS`); `--out` only chooses where the
files go. Files are the CSV / JSON Lines that `--dataset events:PATH` reads (`personal.events_io`).

Part 2, the comparison (second half). For every file it runs the library's own path
(`simulations.runner.run_simulation`, the code behind `homebody simulate --dataset events:PATH`)
with homebody's DEFAULT settings in three configurations: federated at user-level ε 8 and ε 1, and
local-only at record-level ε 8. Each run reports every predictor in results.json (habit, LoRA,
combined; `top1` is the default `--predictor combined`, and a `--predictor habit` run reports the
same training's `habit_top1` as its top-1, so the habit column IS that run). It writes
`foreign_table.md` and `foreign_table.json`: every counting baseline, best counting, the private
predictors, and each one's gap to best counting. Finished runs are skipped, so it resumes.

    .venv/bin/python -m benchmarks.foreign_populations --out runs/foreign             # generate + run all
    .venv/bin/python -m benchmarks.foreign_populations --out runs/foreign --generate-only
    .venv/bin/python -m benchmarks.foreign_populations --out runs/foreign --populations iid_zipf --devices 50

Sizing (not tuning; fixed before any run): 20 devices per file (homebody's selection: the 20 with
the most events) and each device's last 80 events: the 12 runs took 10 min 21 s of CPU (32 min wall
with the 2 cores loaded ~10 by other jobs). `--devices` / `--max-events` change only the size.
The table records each file's sha256, so a re-run can show it used the same frozen files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np

# ----------------------------------------------------------------------------- generator (frozen)

FIRST_DAY = datetime(2025, 2, 12)  # a Wednesday, local wall clock of every owner
OFFSETS_H = (-8, -5, -3, 0, 1, 2, 5.5, 8, 9)  # owners' UTC offsets (hours)


@dataclass(frozen=True)
class PopulationSpec:
    """One foreign population: its file name, generator, owner count and seed (all fixed a priori)."""

    name: str
    file: str
    owners: int
    seed: int
    make: Callable[[np.random.Generator, str], list[tuple[datetime, str]]]


def _owner_tz(rng: np.random.Generator) -> timezone:
    """A per-owner fixed UTC offset (timestamps are written in the owner's local time)."""
    return timezone(timedelta(hours=float(rng.choice(OFFSETS_H))))


def _at(day: int, hours: float) -> datetime:
    """Local wall-clock time `hours` after midnight of day `day` (hours may leave [0, 24))."""
    return FIRST_DAY + timedelta(days=day, hours=hours)


# shift workers -----------------------------------------------------------------------------------

SHIFT_STARTS = (6.0, 14.0, 22.0)  # early, late, night
SHIFT_ANCHORS = (("bus_in", -0.8), ("badge_in", 0.0), ("locker", 0.15), ("canteen", 4.2),
                 ("badge_out", 8.0), ("bus_home", 8.4))
SHIFT_NOISE = ("gaming", "laundry", "phone_mum", "takeaway", "stretch", "pharmacy", "bank_app",
               "podcast", "groceries_run", "tv_series", "nap", "dog_walk")


def shift_worker(rng: np.random.Generator, user: str) -> list[tuple[datetime, str]]:
    """One rotating-shift owner: anchored shift events (jittered, sometimes unlogged) plus heavy noise."""
    period = int(rng.choice((7, 14)))  # days per rotation
    phase = int(rng.integers(0, 3 * period))
    log_p = rng.uniform(0.45, 0.85)  # chance an anchored event is logged
    jitter = rng.uniform(0.6, 1.3)  # hours (std)
    noise_rate = rng.uniform(2.0, 5.0)  # unanchored events per day
    noise_pref = rng.dirichlet(np.full(len(SHIFT_NOISE), 0.4))
    rest = set(rng.choice(7, size=2, replace=False).tolist())  # rest weekdays (shift back by rotation)
    days = int(rng.integers(25, 70))
    out: list[tuple[datetime, str]] = []
    for d in range(days):
        rotation = ((d + phase) // period) % 3
        if (d + rotation) % 7 not in rest:
            start = SHIFT_STARTS[rotation] + rng.normal(0, 0.25)
            for name, lag in SHIFT_ANCHORS:
                if rng.random() < log_p:
                    out.append((_at(d, start + lag + rng.normal(0, jitter)), name))
        for _ in range(rng.poisson(noise_rate)):
            out.append((_at(d, rng.uniform(0, 24)), str(rng.choice(SHIFT_NOISE, p=noise_pref))))
    return out


# app sessions ------------------------------------------------------------------------------------

APPS = ("mail", "chat", "maps", "camera", "banking", "weather", "notes", "video", "shop", "reader",
        "fitness", "calendar", "music", "browser", "puzzle_game", "translate", "news_feed", "photos")


def _chain(rng: np.random.Generator, used: np.ndarray) -> np.ndarray:
    """A sparse random transition matrix over the owner's apps (rows sum to 1)."""
    k = len(used)
    return rng.dirichlet(np.full(k, 0.3), size=k)


def app_owner(rng: np.random.Generator, user: str) -> list[tuple[datetime, str]]:
    """One owner's app sessions: Markov chain blended day/night by the hour, drifting weekly, bursty repeats."""
    used = rng.choice(len(APPS), size=int(rng.integers(5, 13)), replace=False)
    day_m, night_m = _chain(rng, used), _chain(rng, used)
    opener = rng.dirichlet(np.full(len(used), 0.5))
    peak0 = rng.uniform(9, 17)  # hour where the day matrix dominates
    drift = rng.uniform(-1.5, 1.5)  # hours per week the peak moves
    repeat = rng.uniform(0.15, 0.55)
    sessions_per_day = rng.uniform(1.5, 5.0)
    centres = np.sort(rng.uniform(6, 23, size=2))
    days = int(rng.integers(8, 40))
    out: list[tuple[datetime, str]] = []
    for d in range(days):
        peak = peak0 + drift * (d / 7.0)
        for _ in range(rng.poisson(sessions_per_day)):
            t = float(rng.normal(rng.choice(centres), 1.5))
            cur = int(rng.choice(len(used), p=opener))
            for _ in range(1 + rng.geometric(0.4)):
                out.append((_at(d, t), APPS[used[cur]]))
                t += rng.exponential(4.0) / 60.0 + 0.5 / 60.0
                if rng.random() >= repeat:
                    w = 0.5 + 0.5 * np.cos(2 * np.pi * ((t % 24) - peak) / 24.0)
                    row = w * day_m[cur] + (1 - w) * night_m[cur]
                    cur = int(rng.choice(len(used), p=row / row.sum()))
    return out


# i.i.d. Zipf -------------------------------------------------------------------------------------

SHOP = ("bread", "milk", "eggs", "apples", "coffee_beans", "rice", "pasta", "cheese", "yoghurt", "tea",
        "bananas", "tomatoes", "onions", "butter", "chicken", "tofu", "lentils", "oats", "honey", "juice",
        "spinach", "carrots", "soap", "shampoo", "batteries", "chocolate", "crisps", "olive_oil", "flour",
        "sugar", "salmon", "beans", "peppers", "lemons", "garlic", "cereal", "water", "wine", "tissues", "socks")


def iid_owner(rng: np.random.Generator, user: str) -> list[tuple[datetime, str]]:
    """Independent draws from the owner's Zipf frequency, at uniformly random times: no time or order signal."""
    vocab = [SHOP[i] for i in rng.choice(len(SHOP), size=int(rng.integers(6, 26)), replace=False)]
    vocab += [f"{user}_private_{j}" for j in range(int(rng.integers(0, 4)))]
    order = rng.permutation(len(vocab))
    s = rng.uniform(0.7, 1.5)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** s
    p /= p.sum()
    n = int(rng.integers(40, 220))
    span = float(rng.integers(20, 90)) * 24.0  # hours
    picks = rng.choice(len(vocab), size=n, p=p)
    times = rng.uniform(0, span, size=n)
    return [(_at(0, float(t)), vocab[order[i]]) for t, i in zip(times, picks)]


# sparse, mostly private vocabulary ---------------------------------------------------------------

COMMON = ("post_office", "library", "pharmacy", "barber", "cinema", "market", "dentist", "park")


def sparse_owner(rng: np.random.Generator, user: str) -> list[tuple[datetime, str]]:
    """Few events, 70% of them private names, each name with a loose preferred weekday and hour."""
    names = [f"{user}_place_{j}" for j in range(int(rng.integers(2, 7)))] + list(
        rng.choice(COMMON, size=int(rng.integers(1, 4)), replace=False))
    private = [i for i, n in enumerate(names) if n.startswith(user)]
    weekday = rng.integers(0, 7, size=len(names))
    hour = rng.uniform(7, 22, size=len(names))
    out: list[tuple[datetime, str]] = []
    for _ in range(int(rng.integers(6, 41))):
        i = int(rng.choice(private)) if rng.random() < 0.7 else int(rng.integers(len(private), len(names)))
        week = int(rng.integers(0, 10))
        wd = int(weekday[i]) if rng.random() < 0.6 else int(rng.integers(0, 7))
        day = week * 7 + (wd - FIRST_DAY.weekday()) % 7
        out.append((_at(day, float(np.clip(rng.normal(hour[i], 2.0), 0, 23.9))), names[i]))
    return out


SPECS = (
    PopulationSpec("shift_workers", "shift_workers.csv", 240, 14001, shift_worker),
    PopulationSpec("app_sessions", "app_sessions.jsonl", 240, 14002, app_owner),
    PopulationSpec("iid_zipf", "iid_zipf.csv", 240, 14003, iid_owner),
    PopulationSpec("sparse_private", "sparse_private.jsonl", 240, 14004, sparse_owner),
)


def owners(spec: PopulationSpec, n: int | None = None) -> list:
    """The population's events (`personal.vault.Event`, local time with the owner's offset), owner by owner."""
    from personal.vault import Event

    rng = np.random.default_rng(spec.seed)
    events = []
    for i in range(spec.owners if n is None else n):
        user = f"{spec.name[:5]}{i:03d}"
        tz = _owner_tz(rng)
        rows = sorted(spec.make(rng, user))
        events += [Event(user=user, timestamp=t.replace(microsecond=0, tzinfo=tz), event=e) for t, e in rows]
    return events


def generate(out: Path, specs=SPECS, n: int | None = None) -> dict[str, Path]:
    """Write every population's file under `out`; returns name -> path."""
    from personal.events_io import export_events

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for spec in specs:
        paths[spec.name] = out / spec.file
        export_events(owners(spec, n), paths[spec.name])
    return paths


# ----------------------------------------------------------------------------- comparison

CONFIGS = (("federated", 8.0), ("federated", 1.0), ("local", 8.0))  # (mode, ε); everything else default
PREDICTORS = ("habit", "combined", "lora")  # habit is homebody's default --predictor; the others train only on request
TOLERANCE = 0.01  # acceptance 3: never more than this below best counting
TABLE_MD, TABLE_JSON = "foreign_table.md", "foreign_table.json"
DRAW_STEP = 1000  # --draw K adds K * DRAW_STEP to every population's seed


def run_population(path: Path, out: Path, devices: int | None, max_events: int | None,
                   log: Callable[[str], None] = print, **overrides) -> list[dict]:
    """The three default configurations on one events file (resuming finished ones); one row each.

    `overrides` (other SimulationConfig fields) are for tests only (a tiny model); the benchmark passes none.
    """
    from simulations.config import SimulationConfig
    from simulations.devices import FeatureCache
    from simulations.results import finished_results
    from simulations.runner import run_simulation
    from simulations.sweep import run_dir

    rows = []
    cache = FeatureCache(out / f".feature-cache-{os.getpid()}", mem_bytes=1 << 30)
    try:
        for mode, eps in CONFIGS:
            where = run_dir(out, mode, eps)
            res = finished_results(where)
            if res is None:
                log(f"{where}: running {mode}, ε = {eps:g}")
                cfg = SimulationConfig(dataset=f"events:{path}", devices=devices, max_events=max_events,
                                       mode=mode, epsilon=eps, out=str(where), **overrides)
                res = run_simulation(cfg, feature_cache=cache)
            rows.append(result_row(mode, eps, res))
            scored = ", ".join(f"{p} {rows[-1][f'{p}_top1']:.3f}" for p in rows[-1]["gap"])
            log(f"{where}: {scored}, best counting {rows[-1]['baselines']['best_counting']:.3f}")
    finally:
        cache.clear_files()
    return rows


def result_row(mode: str, eps: float, res: dict) -> dict:
    """One configuration's numbers: baselines, each predictor, its gap to best counting, ε spent."""
    from personal.evaluate import chronological_split
    from simulations.sweep import baseline_rows, run_row

    row = run_row(mode, eps, res)
    base = {b["key"]: b["top1"] for b in baseline_rows(res["baselines"])}
    best = base["best_counting"]
    # a predictor the run did not train (--predictor habit trains no LoRA) has no score and no gap
    gaps = {p: row[f"{p}_top1"] - best for p in PREDICTORS if row.get(f"{p}_top1") is not None}
    held_out = sum(len(chronological_split(range(d["events"]))[1]) for d in res["devices"])
    return {"mode": mode, "epsilon": eps, "unit": row["unit"], "devices": res["population"]["devices"],
            "labels": res["population"]["labels"], "held_out_events": held_out,
            "baselines": base, **{f"{p}_top1": row.get(f"{p}_top1") for p in PREDICTORS},
            "gap": gaps, "within_tolerance": {p: g >= -TOLERANCE for p, g in gaps.items()},
            "epsilon_spent_max": row["epsilon_spent_max"], "wall_s": row["wall_s"],
            "predictor": row.get("predictor"), "scorer_kept": row.get("scorer_kept")}


GENERATOR_FROZEN_AT = "8e9b8ab"  # the commit that froze the generator, before any model ran on its files


def generator_commit() -> str:
    """The last commit that changed this file (its generator half is frozen since GENERATOR_FROZEN_AT;
    the sha256 of each file in the table is the exact check)."""
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%h %cI", "--", Path(__file__).name],
                              cwd=Path(__file__).parent, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown(table: dict) -> str:
    """The comparison as Markdown: one row per (population, configuration)."""
    from simulations.sweep import run_name

    base_keys = ("most_frequent", "markov", "hour", "slot", "mix", "best_counting")
    draw = f", draw {table['draw']} (seeds + {table['draw'] * DRAW_STEP})" if table.get("draw") else ""
    lines = [f"Foreign populations (generator {table['generator_commit']}{draw}), {table['devices']} devices per file, "
             f"last {table['max_events']} events each; macro top-1 on each device's held-out last 20%.", "",
             *(f"- {p['file']}: sha256 {p['sha256'][:16]}…" for p in table["populations"] if p.get("sha256")), "",
             "| population | run | ε spent (max) | " + " | ".join(base_keys).replace("_", " ")
             + " | habit (default) | combined | LoRA | habit − best | combined − best | LoRA − best |",
             "|---|---|---|" + "---|" * (len(base_keys) + 6)]
    for pop in table["populations"]:
        for r in pop["runs"]:
            run = f"{run_name(r['mode'], r.get('predictor') or 'habit')} ε={r['epsilon']:g} ({r['unit']})"
            if r.get("scorer_kept") is not None:
                run += ", scorer kept" if r["scorer_kept"] else ", scorer not kept"
            gaps = [f"{r['gap'][p]:+.3f}" + ("" if r["within_tolerance"][p] else " ✗") if p in r["gap"] else "–"
                    for p in PREDICTORS]
            lines.append(f"| {pop['name']} | {run} | {_num(r['epsilon_spent_max'])} | "
                         + " | ".join(_num(r["baselines"].get(k)) for k in base_keys)
                         + " | " + " | ".join(_num(r[f"{p}_top1"]) for p in PREDICTORS) + " | " + " | ".join(gaps) + " |")
    lines += ["", f"✗: more than {TOLERANCE} below best counting (issue 14 acceptance 3 fails for that predictor there)."]
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace) -> dict:
    """Generate the files (fixed seeds), run every configuration on each, write the table."""
    out = Path(args.out)
    # --draw K: the same habit models with other seeds (K x DRAW_STEP added to each): fresh owners
    specs = [replace(s, seed=s.seed + DRAW_STEP * args.draw) for s in SPECS if not args.populations or s.name in args.populations]
    paths = generate(out / "data", specs)
    if args.generate_only:
        return {"files": {k: str(v) for k, v in paths.items()}}
    table = {"generator_commit": generator_commit(), "generator_frozen_at": GENERATOR_FROZEN_AT,
             "devices": args.devices, "max_events": args.max_events, "draw": args.draw,
             "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": os.getloadavg(),
             "populations": []}
    t0 = time.perf_counter()
    for spec in specs:
        rows = run_population(paths[spec.name], out / spec.name, args.devices, args.max_events)
        digest = hashlib.sha256(paths[spec.name].read_bytes()).hexdigest()
        table["populations"].append({"name": spec.name, "file": spec.file, "sha256": digest, "runs": rows})
    table |= {"wall_s": time.perf_counter() - t0, "load_end": os.getloadavg()}
    (out / TABLE_JSON).write_text(json.dumps(table, indent=2) + "\n")
    (out / TABLE_MD).write_text(markdown(table))
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/foreign-populations"),
                   help="folder for the generated files (out/data) and the runs (never commit it)")
    p.add_argument("--devices", type=int, default=20, help="devices per file (homebody's largest-first selection)")
    p.add_argument("--max-events", type=int, default=80, help="most recent events kept per device")
    p.add_argument("--populations", nargs="*", choices=[s.name for s in SPECS], help="a subset (default: all)")
    p.add_argument("--generate-only", action="store_true", help="write the files, run nothing")
    p.add_argument("--draw", type=int, default=0,
                   help="0: the frozen files; K > 0: the same generator with every seed + K x 1000 (fresh owners)")
    args = p.parse_args(argv)
    table = compare(args)
    if args.generate_only:
        print("\n".join(table["files"].values()))
        return
    print((Path(args.out) / TABLE_MD).read_text())
    print(f"wrote {Path(args.out) / TABLE_MD} and {TABLE_JSON} in {table['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
