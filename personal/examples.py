"""Events become examples: the ONE serialisation of a moment in someone's life into model text.

``context_text`` is the only function that turns (history, time, context) into text; training,
``suggest``, evaluation and the simulations all call it, so a model is always asked in the words
it was trained on. The format (one line, stable, tested):

    "Wed 06:55 early morning. Last: Coffee Shop, 2 h ago. Before: Office, Gym. weather: rain."

- ``at`` is read as LOCAL wall-clock time: an aware datetime keeps its own offset (it is not
  converted to UTC), a naive one is taken as already local.
- ``Last``/``Before`` list up to ``k`` previous events, most recent first; the gap since the last
  one is rounded to minutes, hours or days. With no history: "Last: nothing."
- ``context`` fields are appended sorted by key, as ``key: value``.

``events_to_examples`` turns a chronological event list into supervised examples: for each event,
the context built from the events before it, and the event's name as the label. An event that
carries free text (a message, a note) also yields a language-modelling example (``label`` None,
``kind`` "lm") whose text is the context followed by "Note: <text>".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # the vault's Event: (user, timestamp, event, context, text)
    from personal.vault import Event

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
NEXT, LM = "next", "lm"


@dataclass(frozen=True)
class Example:
    """One training example: ``text`` and the next event ``label`` (None for an LM example)."""

    text: str
    label: str | None
    kind: str = NEXT


def part_of_day(hour: int) -> str:
    """A coarse name for the hour, which tokenizes better than digits alone."""
    if hour < 5:
        return "night"
    if hour < 9:
        return "early morning"
    if hour < 12:
        return "morning"
    if hour < 14:
        return "midday"
    if hour < 18:
        return "afternoon"
    if hour < 22:
        return "evening"
    return "night"


def _gap(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // (24 * 60)} d ago"


def _naive_local(at: datetime) -> datetime:
    # An aware timestamp keeps its own wall clock: drop the tzinfo without converting.
    return at.replace(tzinfo=None)


def context_text(history: Sequence["Event"], at: datetime, context: Mapping[str, str] | None = None, k: int = 3) -> str:
    """Serialise the moment ``at`` (local time), the last ``k`` events of ``history`` and ``context``.

    ``history`` is chronological and must hold only events before ``at`` (callers slice it).
    """
    local = _naive_local(at)
    parts = [f"{DAYS[local.weekday()]} {local:%H:%M} {part_of_day(local.hour)}."]
    recent = list(history[-k:])[::-1] if k > 0 else []
    if not recent:
        parts.append("Last: nothing.")
    else:
        gap = (local - _naive_local(recent[0].timestamp)).total_seconds()
        parts.append(f"Last: {recent[0].event}, {_gap(gap)}.")
        if len(recent) > 1:
            parts.append("Before: " + ", ".join(e.event for e in recent[1:]) + ".")
    for key in sorted(context or {}):
        parts.append(f"{key}: {context[key]}.")
    return " ".join(parts)


def events_to_examples(events: Sequence["Event"], history: int = 3) -> list[Example]:
    """One next-event example per event (context from the events before it), plus LM examples for text.

    ``events`` must be one owner's events in chronological order (``vault.events(profile)``).
    """
    out: list[Example] = []
    for i, ev in enumerate(events):
        ctx = context_text(events[max(0, i - history):i], ev.timestamp, ev.context, k=history)
        out.append(Example(ctx, ev.event, NEXT))
        if ev.text:
            out.append(Example(f"{ctx} Note: {ev.text}", None, LM))
    return out


def label_space(events: Sequence["Event"]) -> list[str]:
    """The owner's event vocabulary, sorted (the label space of a local adapter)."""
    return sorted({e.event for e in events})
