"""Vault throughput: import-and-seal and read-and-open events/s, and bytes on disk per event.

Run: .venv/bin/python -m benchmarks.vault_throughput [--events 100000] [--repeats 3]
Prints a Markdown table (median and best of the repeats, wall clock and per CPU-second) for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from personal.events_io import export_events, read_events
from personal.vault import Event, Vault

NAMES = ("wake", "sleep", "coffee", "lunch", "run", "commute", "read", "call", "gym", "shop")
PLACES = ("home", "office", "cafe", "park", "gym", "train")


def synthetic_events(n: int, users: int, seed: int = 0) -> list[Event]:
    """`n` events over `users` people: 2 context fields each, free text on 30% of them."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return [
        Event(
            f"user{i % users:03d}",
            t0 + timedelta(minutes=7 * i + rng.randint(0, 6)),
            rng.choice(NAMES),
            {"place": rng.choice(PLACES), "mood": str(rng.randint(1, 5))},
            f"note {rng.randint(0, 10**6)} about the day" if rng.random() < 0.3 else None,
        )
        for i in range(n)
    ]


def plain_bytes(ev: Event) -> int:
    """Size of the event's values in the clear (UTF-8), for comparison with the sealed size."""
    return len(ev.user) + len(ev.timestamp.isoformat()) + len(ev.event) + len(str(ev.context)) + len(ev.text or "")


class Clock:
    """Wall and CPU seconds of one step (CPU time shows the cost when the shared machine is loaded)."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_once(events: list[Event], workdir: Path, index: int) -> dict[str, tuple[float, float]]:
    """One fresh vault: seal+store, read+open every profile, rotate, verify, CSV import; (wall, cpu) events/s."""
    n = len(events)
    out: dict[str, tuple[float, float]] = {}
    path = workdir / f"bench-{index}.db"
    with Vault.create(path, "benchmark passphrase") as vault:
        with Clock() as c:
            vault.add_events(events)
        out["seal"] = (n / c.wall, n / c.cpu)
        with Clock() as c:
            opened = sum(len(vault.events(p)) for p in vault.profiles())
        assert opened == n
        out["open"] = (n / c.wall, n / c.cpu)
        with Clock() as c:
            vault.rotate_data_key()
        out["rotate"] = (n / c.wall, n / c.cpu)
        with Clock() as c:
            assert vault.verify().ok
        out["verify"] = (n / c.wall, n / c.cpu)
    size = path.stat().st_size / n  # closed: the WAL is checkpointed into the file
    out["bytes"] = (size, size)
    csv_path = workdir / f"events-{index}.csv"
    export_events(events, csv_path)
    with Vault.create(workdir / f"csv-{index}.db", "benchmark passphrase") as vault:
        with Clock() as c:
            vault.add_events(read_events(csv_path).events)
        out["csv"] = (n / c.wall, n / c.cpu)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    events = synthetic_events(args.events, args.users)
    results = []
    with tempfile.TemporaryDirectory(prefix="homebody-bench-") as tmp:
        for i in range(args.repeats):
            results.append(run_once(events, Path(tmp), i))
    clear = statistics.mean(plain_bytes(e) for e in events)
    rows = [
        ("import and seal (`add_events`)", "seal", "events/s"),
        ("read and open (`events(profile)` for every profile)", "open", "events/s"),
        ("CSV file → vault (`read_events` + `add_events`)", "csv", "events/s"),
        ("rotate data key (re-encrypt everything, one transaction)", "rotate", "events/s"),
        ("verify (open every sealed value)", "verify", "events/s"),
    ]
    print(f"{args.events:,} events, {args.users} profiles, {args.repeats} runs; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| measure | median (wall) | best (wall) | per CPU-second (median) |\n|---|---:|---:|---:|")
    for label, key, unit in rows:
        wall, cpu = [r[key][0] for r in results], [r[key][1] for r in results]
        print(f"| {label} | {statistics.median(wall):,.0f} {unit} | {max(wall):,.0f} {unit} | {statistics.median(cpu):,.0f} {unit} |")
    sizes = [r["bytes"][0] for r in results]
    print(f"| file size per event (clear values average {clear:.0f} B) | {statistics.median(sizes):,.0f} B | {min(sizes):,.0f} B | |")
    print(f"\nload average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
