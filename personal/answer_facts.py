"""The deterministic facts grounded answers are built from: counts over the owner's own events.

Kept apart from the question understanding and the phrasing (personal/answers.py) on purpose:
DESIGN.md's "one habit-statistics function" (personal/habits.py, being written in parallel) is
meant to own these counts, and at merge the functions below switch to it without touching the
rest of the answer path. Everything here is plain Python over ``Event`` objects: no model, no vault.

Time is the event's local wall-clock time (an aware timestamp keeps its own offset), as
``personal.examples.context_text`` reads it. A ``Scope`` is a set of weekdays and/or a
minute-of-day window ``[start, end)``; a window whose end passes midnight (night: 22:00-05:00)
wraps around.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from personal.examples import part_of_day

if TYPE_CHECKING:
    from personal.vault import Event

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# The parts of day a question may name, as minute-of-day windows [start, end); night wraps midnight.
PART_WINDOWS: dict[str, tuple[int, int]] = {
    "early morning": (5 * 60, 9 * 60),
    "morning": (5 * 60, 12 * 60),
    "midday": (11 * 60, 14 * 60),
    "afternoon": (12 * 60, 18 * 60),
    "evening": (18 * 60, 22 * 60),
    "night": (22 * 60, 29 * 60),
}
AROUND_MIN = 60  # "around 7" means within an hour of 07:00


@dataclass(frozen=True)
class Scope:
    """Which events a question is about: weekdays (0 = Monday) and/or a minute-of-day window."""

    days: tuple[int, ...] | None = None
    start: int | None = None  # minute of day, inclusive
    end: int | None = None  # minute of day, exclusive; > 1440 wraps past midnight
    time_words: tuple[str, ...] = ()  # how the question said the time ("morning", "around 07:00")

    @property
    def empty(self) -> bool:
        """Whether the scope keeps every event."""
        return self.days is None and self.start is None

    def holds(self, ts: datetime) -> bool:
        """Whether an event at local time ``ts`` is in the scope."""
        if self.days is not None and ts.weekday() not in self.days:
            return False
        if self.start is None or self.end is None:
            return True
        minute = ts.hour * 60 + ts.minute
        if self.end > 1440:
            return minute >= self.start or minute < self.end - 1440
        return self.start <= minute < self.end


def local(e: "Event") -> datetime:
    """The event's wall-clock time (the offset dropped, not converted)."""
    return e.timestamp.replace(tzinfo=None)


def in_scope(events: Sequence["Event"], scope: Scope | None) -> list["Event"]:
    """The events a scope keeps (all of them for no scope)."""
    if scope is None or scope.empty:
        return list(events)
    return [e for e in events if scope.holds(local(e))]


def event_counts(events: Sequence["Event"]) -> Counter:
    """How many times each event name occurs."""
    return Counter(e.event for e in events)


def successors(events: Sequence["Event"], target: str) -> Counter:
    """What the owner did right after each ``target`` event (the next event in time)."""
    ordered = sorted(events, key=local)
    return Counter(b.event for a, b in zip(ordered, ordered[1:]) if a.event == target)


@dataclass(frozen=True)
class WhenStats:
    """When one event happens: counts by weekday, by part of day and by hour."""

    total: int
    weekdays: Counter
    parts: Counter
    hours: Counter


def when_stats(events: Sequence["Event"], target: str) -> WhenStats:
    """Weekday, part-of-day (``personal.examples.part_of_day``) and hour counts of ``target``."""
    times = [local(e) for e in events if e.event == target]
    return WhenStats(len(times), Counter(t.weekday() for t in times), Counter(part_of_day(t.hour) for t in times),
                     Counter(t.hour for t in times))


def span_weeks(events: Sequence["Event"]) -> int:
    """Whole weeks the owner's events cover (at least 1)."""
    if not events:
        return 1
    times = sorted(local(e) for e in events)
    return max(1, round((times[-1] - times[0]).total_seconds() / (7 * 86400)))


def top(counter: Counter, k: int = 3) -> list[tuple[str, int]]:
    """The ``k`` most frequent items, ties broken by name so that answers are reproducible."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:k]


def winners(counter: Counter) -> list:
    """Every item tied at the highest count (sorted), or [] for an empty counter."""
    if not counter:
        return []
    best = max(counter.values())
    return sorted(k for k, v in counter.items() if v == best)


def last_event(events: Sequence["Event"]) -> "Event | None":
    """The owner's most recent event."""
    return max(events, key=local) if events else None
