"""Shared builders for the personalization tests: a synthetic owner with a known routine."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from personal.vault import Event

START = datetime(2026, 1, 5)  # a Monday


def routine_owner(user: str = "ana", weeks: int = 8, seed: int = 0, gym: bool = True, extra_days: int = 0) -> list[Event]:
    """Gym on Mon/Wed/Fri at 07:00; coffee most mornings ~08:15; office on weekdays; park or cinema at weekends.

    Starts Monday 2026-01-05 and covers ``weeks`` weeks plus ``extra_days`` days.
    """
    rng = random.Random(seed)
    out: list[Event] = []
    for d in range(weeks * 7 + extra_days):
        day = START + timedelta(days=d)
        wd = day.weekday()
        if gym and wd in (0, 2, 4):
            out.append(Event(user, day.replace(hour=7, minute=rng.randint(0, 5)), "Gym"))
        if rng.random() < 0.9:
            out.append(Event(user, day.replace(hour=8, minute=rng.randint(5, 30)), "Coffee Shop"))
        if wd < 5:
            out.append(Event(user, day.replace(hour=9, minute=rng.randint(0, 15)), "Office"))
            out.append(Event(user, day.replace(hour=18, minute=rng.randint(0, 40)), "Subway"))
        else:
            out.append(Event(user, day.replace(hour=15, minute=rng.randint(0, 59)), rng.choice(["Park", "Cinema"])))
    return out
