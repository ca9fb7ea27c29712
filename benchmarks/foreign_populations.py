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

    .venv/bin/python -m benchmarks.foreign_populations generate --out /tmp/foreign
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the population files only")
    g.add_argument("--out", type=Path, default=Path("/tmp/foreign-populations"))
    args = p.parse_args(argv)
    for name, path in generate(args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
