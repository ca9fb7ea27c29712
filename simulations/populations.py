"""Populations of simulated devices: synthetic owners with planted routines, bundled datasets, a user's file.

A `Population` is a list of `Device`s, each holding one owner's chronological events (the same
`personal.vault.Event` a real device stores). The synthetic generator also keeps its ground truth:
for every event, whether a planted routine produced it, and each owner's routine specification,
so that results can be checked against what was planted.

Names understood by `load_population`:
  synthetic            seeded generator (see `SyntheticConfig`)
  foursquare-nyc       ../shared/data/foursquare_nyc (next venue category)
  shakespeare          ../shared/data/shakespeare_roles (one device per speaking role, text events)
  events:PATH          a CSV or JSON Lines file with user,timestamp,event (+ context columns)
"""

from __future__ import annotations

import csv
import gzip
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from privacy.errors import HomebodyError
from simulations.datasets import dataset_dir

DATASETS = ("synthetic", "foursquare-nyc", "shakespeare", "events:PATH")


class UnknownDataset(HomebodyError):
    """The dataset name is none of the known ones."""


class EmptyPopulation(HomebodyError):
    """The selection left no device with enough events to simulate."""


@dataclass(frozen=True)
class Routine:
    """One planted habit: `event` at `hour:minute` (± jitter) on the given weekdays (0 = Monday)."""

    event: str
    weekdays: tuple[int, ...]
    hour: int
    minute: int
    prob: float = 0.9


@dataclass
class Device:
    """One simulated device: its owner's events, chronological, and (synthetic only) the ground truth."""

    user: str
    events: list  # list[personal.vault.Event]
    planted: list[str] | None = None  # per event: "daily", "weekly" (a planted routine) or "" (noise)
    cold_start: bool = False

    def __len__(self) -> int:
        return len(self.events)


@dataclass
class Population:
    """A named set of devices plus what the generator planted (empty for real data)."""

    name: str
    devices: list[Device]
    routines: dict[str, list[Routine]] = field(default_factory=dict)
    description: str = ""

    @property
    def n_events(self) -> int:
        return sum(len(d) for d in self.devices)

    def labels(self) -> list[str]:
        """The population's event vocabulary, sorted (the label space of a shared head)."""
        return sorted({e.event for d in self.devices for e in d.events})


# --------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic generator; the defaults give a varied, realistic-looking population."""

    devices: int = 50
    days_median: int = 42  # logging days of a typical owner (heterogeneous activity)
    cold_start_share: float = 0.15  # owners with only a few days of events
    cold_start_days: int = 4
    noise_rate: float = 0.8  # unplanned events per day, on average
    skip_prob: float = 0.08  # chance a daily habit is not logged on a given day
    jitter_min: float = 12.0  # std of the time jitter, minutes
    drift_min_per_week: float = 4.0  # slow drift of wake-up time
    seed: int = 0


_NOISE_EVENTS = ("open_news", "open_social", "open_music", "call_family", "snack", "groceries", "walk", "tv", "read")
_GYM_DAYS = ((0, 2, 4), (1, 3), (0, 3), (5, 6), (1, 3, 5))


def _owner_routines(rng: random.Random) -> tuple[dict, list[Routine]]:
    """Draw one owner's daily schedule (sleep/wake/meals/commute) and their weekday routines."""
    wake = rng.uniform(5.75, 8.5)
    sched = {
        "wake": wake,
        "weekend_shift": rng.uniform(0.5, 2.5),
        "sleep": rng.uniform(22.0, 24.5),
        "lunch": rng.uniform(11.75, 13.5),
        "dinner": rng.uniform(18.0, 20.5),
        "works": rng.random() < 0.8,
        "work_days": tuple(range(5)) if rng.random() < 0.85 else (0, 1, 2, 3),
        "news_app": rng.random() < 0.5,  # opens a news app right after waking on working days
    }
    routines: list[Routine] = []
    if rng.random() < 0.75:  # a gym habit on fixed weekdays, early or evening
        days = rng.choice(_GYM_DAYS)
        h = rng.choice([int(wake) if wake >= 6.5 else 7, 18, 19])
        routines.append(Routine("gym", days, h, rng.choice([0, 15, 30]), prob=rng.uniform(0.8, 0.95)))
    if rng.random() < 0.5:
        day = rng.randrange(7)
        routines.append(Routine("call_family", (day,), rng.choice([17, 19, 20]), 0, prob=0.85))
    if rng.random() < 0.4:
        routines.append(Routine("yoga", (rng.choice([1, 3, 5, 6]),), rng.choice([8, 10, 18]), 30, prob=0.85))
    if rng.random() < 0.4:
        routines.append(Routine("groceries", (rng.choice([5, 6]),), rng.choice([10, 11, 16]), 0, prob=0.85))
    return sched, routines


def _day_events(rng: random.Random, cfg: SyntheticConfig, sched: dict, routines: list[Routine],
                day: datetime, week: int) -> list[tuple[datetime, str, str, dict]]:
    """One day of (time, event, kind, context) for one owner, unsorted; kind is "daily", "weekly" or ""."""
    wd = day.weekday()
    weekend = wd >= 5
    out: list[tuple[datetime, str, str, dict]] = []

    # No context fields: `context_text` shows an event's own context, so a field like "place"
    # would give the label away.
    def at(hours: float, event: str) -> None:
        if rng.random() < cfg.skip_prob:
            return
        h = hours + rng.gauss(0, cfg.jitter_min) / 60
        out.append((day + timedelta(hours=h), event, "daily", {}))

    wake = sched["wake"] + week * cfg.drift_min_per_week / 60 + (sched["weekend_shift"] if weekend else 0)
    at(wake, "wake")
    at(wake + 0.4, "breakfast")
    working = sched["works"] and wd in sched["work_days"]
    if working:
        if sched["news_app"]:
            at(wake + 0.2, "open_news")
        at(wake + 0.9, "commute_to_work")
        at(wake + 1.4, "coffee")
        at(17.3 + rng.gauss(0, 0.3), "commute_home")
    at(sched["lunch"], "lunch")
    at(sched["dinner"], "dinner")
    at(sched["sleep"] + (0.7 if wd in (4, 5) else 0), "sleep")
    for r in routines:
        if wd in r.weekdays and rng.random() < r.prob:
            out.append((day + timedelta(hours=r.hour + r.minute / 60 + rng.gauss(0, cfg.jitter_min) / 60),
                        r.event, "weekly", {}))
    for _ in range(_poisson(rng, cfg.noise_rate)):
        out.append((day + timedelta(hours=rng.uniform(wake, 23.0)), rng.choice(_NOISE_EVENTS), "", {}))
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth), enough for small rates."""
    import math

    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def synthetic(cfg: SyntheticConfig = SyntheticConfig()) -> Population:
    """Generate `cfg.devices` owners with planted routines; seeded and reproducible.

    Each owner has a daily schedule (wake, meals, commute on working days, sleep; later on
    weekends; wake time drifting slowly), weekday routines (gym on fixed days, a weekly call,
    ...), random unplanned events, a heterogeneous number of logging days, and some owners are
    cold-start (a few days only). `Device.planted[i]` says which part of the plan produced event i:
    "daily" (schedule), "weekly" (a weekday routine such as the gym) or "" (unplanned noise).
    """
    from personal.vault import Event

    rng = random.Random(cfg.seed)
    start = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday
    devices, routines = [], {}
    for i in range(cfg.devices):
        user = f"owner{i:04d}"
        sched, owner_routines = _owner_routines(rng)
        cold = rng.random() < cfg.cold_start_share
        days = cfg.cold_start_days if cold else max(7, int(rng.lognormvariate(0, 0.45) * cfg.days_median))
        offset = rng.randrange(14)
        rows = []
        for d in range(days):
            day = start + timedelta(days=offset + d)
            rows += _day_events(rng, cfg, sched, owner_routines, day, d // 7)
        rows.sort(key=lambda r: r[0])
        events = [Event(user=user, timestamp=t.replace(second=0, microsecond=0), event=e, context=c)
                  for t, e, _, c in rows]
        devices.append(Device(user, events, planted=[k for _, _, k, _ in rows], cold_start=cold))
        routines[user] = owner_routines
    return Population("synthetic", devices, routines,
                      f"synthetic: {cfg.devices} owners, seed {cfg.seed}, planted routines kept as ground truth")


# --------------------------------------------------------------------------- foursquare


def _local_time(unix_s: int, hour: int) -> datetime:
    """The check-in time in the venue's local zone: the offset is the one that makes the hour match."""
    utc = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    off = ((hour - utc.hour + 12) % 24) - 12
    return utc.astimezone(timezone(timedelta(hours=off)))


def foursquare_nyc(data_dir: str | Path | None = None) -> Population:
    """The 1,082 NYC Foursquare users; one event per check-in, event = venue category."""
    from personal.vault import Event

    path = dataset_dir("foursquare_nyc", data_dir) / "checkins.csv.gz"
    by_user: dict[str, list] = {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            user = f"u{int(row['user_idx']):04d}"
            ts = _local_time(int(row["unix_s"]), int(row["hour"]))
            by_user.setdefault(user, []).append(Event(user=user, timestamp=ts, event=row["cat"]))
    devices = [Device(u, sorted(ev, key=lambda e: e.timestamp)) for u, ev in sorted(by_user.items())]
    return Population("foursquare-nyc", devices, description="Foursquare NYC check-ins (Yang et al. 2014), next venue category")


# --------------------------------------------------------------------------- shakespeare


def shakespeare(data_dir: str | Path | None = None, min_chars: int = 200) -> Population:
    """One device per speaking role; each non-empty line is a text event (no timestamps: line order).

    Lines get synthetic timestamps one minute apart so the chronological split keeps play order.
    """
    from personal.vault import Event

    folder = dataset_dir("shakespeare_roles", data_dir) / "by_play_and_character"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    devices = []
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) < min_chars:
            continue
        user = path.stem
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        events = [Event(user=user, timestamp=start + timedelta(minutes=i), event="line", text=ln)
                  for i, ln in enumerate(lines)]
        devices.append(Device(user, events))
    return Population("shakespeare", devices, description="LEAF Shakespeare, one device per speaking role (text)")


# --------------------------------------------------------------------------- a user's file


def events_file(path: str | Path) -> Population:
    """A user's CSV / JSON Lines file (user,timestamp,event + context columns); one device per user.

    Parsing is the vault's importer (`personal.events_io`), so a malformed file raises its
    `MalformedEvents` error naming the line; ordering is the vault's rule (naive times count as UTC),
    so a file mixing naive and offset timestamps sorts like the vault would.
    """
    from personal.events_io import chronological, read_events

    path = Path(path).expanduser()
    by_user: dict[str, list] = {}
    for ev in read_events(path).events:
        by_user.setdefault(ev.user, []).append(ev)
    devices = [Device(u, chronological(ev)) for u, ev in sorted(by_user.items())]
    return Population(f"events:{path}", devices, description=f"events file {path}")


# --------------------------------------------------------------------------- selection


def load_population(name: str, *, data_dir: str | Path | None = None, synthetic_devices: int = 50,
                    seed: int = 0) -> Population:
    """Load a population by name (see the module docstring); raises UnknownDataset otherwise."""
    if name == "synthetic":
        return synthetic(SyntheticConfig(devices=synthetic_devices, seed=seed))
    if name in ("foursquare-nyc", "foursquare_nyc"):
        return foursquare_nyc(data_dir)
    if name == "shakespeare":
        return shakespeare(data_dir)
    if name.startswith("events:"):
        return events_file(name[len("events:"):])
    raise UnknownDataset(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")


def select_devices(pop: Population, n: int | None, *, sample: bool = False, seed: int = 0,
                   min_events: int = 2, cold_start: int = 0) -> Population:
    """Keep `n` devices: the n with the most events (ties by user id), or a seeded random draw.

    Devices with fewer than `min_events` events (nothing to train on and hold out) are dropped first.
    `cold_start` > 0 guarantees that many cold-start devices (see `group_of`) among the n, drawn at
    random (seeded); the other n - cold_start come from the remaining devices by the rule above.
    Use it to study cold-start users, whom a top-n selection never contains.
    """
    eligible = [d for d in pop.devices if len(d) >= min_events]
    if not eligible:
        raise EmptyPopulation(f"{pop.name}: no device has at least {min_events} events")
    if n is not None and n < 1:
        raise EmptyPopulation(f"--devices must be at least 1 (got {n})")
    if cold_start:
        cold = [d for d in eligible if group_of(d) == "cold-start"]
        if cold_start < 0 or cold_start > len(cold) or (n is not None and cold_start > n):
            raise EmptyPopulation(f"--cold-start {cold_start}: {pop.name} has {len(cold)} cold-start devices "
                                  f"(<= {COLD_START_MAX} events or generated as such) and --devices is {n}")
        rng = random.Random(seed)
        picked = rng.sample(cold, cold_start)
        taken = {d.user for d in picked}
        others = [d for d in eligible if d.user not in taken]
        rest = len(others) if n is None else min(n - cold_start, len(others))
        chosen = picked + (rng.sample(others, rest) if sample else _largest_first(others)[:rest])
    elif n is None or n >= len(eligible):
        chosen = _largest_first(eligible)
    elif sample:
        chosen = random.Random(seed).sample(eligible, n)
    else:
        chosen = _largest_first(eligible)[:n]
    routines = {d.user: pop.routines[d.user] for d in chosen if d.user in pop.routines}
    return Population(pop.name, chosen, routines, pop.description)


COLD_START_MAX = 20  # a device with at most this many events is "cold-start"


def _largest_first(devices: list[Device]) -> list[Device]:
    return sorted(devices, key=lambda d: (-len(d), d.user))


def group_of(device: Device, cold_start_max: int = COLD_START_MAX) -> str:
    """'cold-start' for devices with few events (or generated as such), else 'rest'."""
    return "cold-start" if device.cold_start or len(device) <= cold_start_max else "rest"


def summary(pop: Population) -> dict:
    """Counts for the output: devices, events, labels, per-device min/median/max."""
    sizes = sorted(len(d) for d in pop.devices)
    return {
        "name": pop.name,
        "devices": len(pop.devices),
        "events": pop.n_events,
        "labels": len(pop.labels()),
        "events_per_device": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]},
        "description": pop.description,
    }


def planted_mask(devices: Sequence[Device]) -> dict[str, list[str]]:
    """Ground truth per user (synthetic only): which part of the plan produced each event."""
    return {d.user: list(d.planted) for d in devices if d.planted is not None}
