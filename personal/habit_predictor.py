"""The on-device habit predictor: ONE choice, made on the device from its own events, for the
simulations (`simulations.habit_sim`) and for `homebody suggest` (`personal.predict.habit_probs`).

A device with the federation's shared scorer weights uses the scorer, unless it has at most
FEW_EVENTS training events; otherwise, and without weights, its own counts (OWN_COUNTS:
personal.evaluate's per-owner choice of counting predictor). Weights reach the predictor only when
the federation's usefulness check passed (`federation.habit_check`: the population's noised sum of
`tail_gain`, the scorer's gain over each owner's best counting on the last 20% of its training
events, confidently positive): a small or very noisy federation must not make its devices worse
than counting, and one device's dozen tail events cannot tell (docs/BENCHMARKS.md). In a
simulation the training events are the owner's training split; in `suggest` they are every event
before the query time `at`. Everything here is a pure function of the owner's events and the
shared weights: nothing is released here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from personal.vault import Event

# The counts a device falls back to (and must be beaten by the shared scorer on its own training
# events): chosen on the foursquare-nyc --validation split only (docs/BENCHMARKS.md).
OWN_COUNTS = "best_counting"
FEW_EVENTS = 16  # a device with at most this many training events uses its own counts (too few to compare on)


@dataclass(frozen=True)
class HabitChoice:
    """Which part of the habit predictor scored: "scorer" (shared weights) or "counts" (own counting
    predictor `counting`, e.g. "markov"), and why ("no weights", "few events", "check passed")."""

    part: str
    counting: str | None
    reason: str


def owner_log_probs(train: list, queries: list, labels: Sequence[str], weights: dict[str, np.ndarray] | None,
                    own: str = OWN_COUNTS, few: int = FEW_EVENTS) -> np.ndarray:
    """(queries, labels) log-probabilities of the habit predictor for one owner (personal.evaluate.Query).

    A label the chosen predictor cannot score gets its floor (personal.habits.floor_unscored).
    """
    from personal.habits import floor_unscored

    labels = list(labels)
    if not queries:
        return np.zeros((0, len(labels)))
    z, names, _ = habit_log_softmax(train, queries, labels, weights, own, few)
    if not names:
        return np.zeros((len(queries), len(labels)))
    pos = {n: i for i, n in enumerate(names)}
    out = np.full((len(z), len(labels)), np.nan)
    for j, name in enumerate(labels):
        if name in pos:
            out[:, j] = z[:, pos[name]]
    return floor_unscored(out)


def habit_log_softmax(train: list, queries: list, labels: Sequence[str], weights: dict[str, np.ndarray] | None,
                      own: str = OWN_COUNTS, few: int = FEW_EVENTS) -> tuple[np.ndarray, list[str], HabitChoice]:
    """THE choice: (queries, candidates) log-softmax scores, the candidates' names and which part scored.

    With shared `weights` (over `labels`, the shared vocabulary; handed in only when the federation's
    usefulness check passed) and more than `few` training events: the scorer over the shared
    vocabulary and the owner's events. Otherwise the owner's counts
    (`counting_logits`) over its own events. No candidate at all: an empty name list.
    """
    choice = _choose(train, labels, weights, own, few)
    if choice.part == "scorer":
        z, names = _scorer_logits(train, queries, labels, weights)
    else:
        z, names = _counting_logits(train, queries, choice.counting)
        if not names:
            return z, names, choice
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True)), names, choice


def _choose(train: list, labels: Sequence[str], weights, own: str, few: int) -> HabitChoice:
    """Scorer or own counts (see `habit_log_softmax`), and the counting predictor the counts use."""
    if weights is not None and len(train) > few:
        return HabitChoice("scorer", None, "check passed")
    reason = "no weights" if weights is None else "few events"
    return HabitChoice("counts", own_choice(train, own), reason)


def own_choice(train: list, own: str = OWN_COUNTS) -> str:
    """The counting predictor `counting_logits` uses: "mix", or personal.evaluate's per-owner choice."""
    from personal.evaluate import choose_counting

    return "mix" if own == "mix" else choose_counting(train)  # best_counting and best_choice: the same fallback


def _scorer_logits(train: list, queries: list, labels: Sequence[str], weights) -> tuple[np.ndarray, list[str]]:
    from personal.habits import ScorerShape, logits, query_batch

    batch = query_batch(train, queries, ScorerShape(tuple(labels)))
    return logits(weights, batch), list(batch.candidates)


def _mix_logits(train: list, queries: list) -> tuple[np.ndarray, list[str]]:
    """log of the smoothed mix of the owner's own shares (personal.evaluate.SmoothedMix's score)."""
    from personal.habits import HabitStats, habit_features

    stats = HabitStats.from_events(train)
    names = list(stats.vocab)
    if not names:
        return np.zeros((len(queries), 0)), names
    rows = [np.log(np.exp(habit_features(stats, q.history, q.target.timestamp)[0][:, [0, 1, 4, 5]]).mean(axis=1))
            for q in queries]
    return np.stack(rows), names


def counting_logits(train: list, queries: list, own: str = OWN_COUNTS) -> tuple[np.ndarray, list[str]]:
    """Scores of the owner's own counting predictor over its own events.

    "mix": the smoothed mix's log-share. "best_counting" (or "best_choice"): the predictor
    personal.evaluate chooses for this owner on its training events; the mix keeps its log-shares,
    the others (rankings only) score minus the rank, so any ranking is reproduced exactly (ties by
    name, as the baselines break them).
    """
    return _counting_logits(train, queries, own_choice(train, own))


def _counting_logits(train: list, queries: list, choice: str) -> tuple[np.ndarray, list[str]]:
    """`counting_logits` of the counting predictor `choice` (a name in personal.evaluate.COUNTING)."""
    from personal.evaluate import COUNTING

    if choice == "mix":
        return _mix_logits(train, queries)
    model = COUNTING[choice](train)
    names = sorted({e.event for e in train})
    pos = {n: i for i, n in enumerate(names)}
    z = np.full((len(queries), len(names)), -float(len(names)))
    for i, q in enumerate(queries):
        for rank, name in enumerate(model.rank(q)):
            z[i, pos[name]] = -float(rank)
    return z, names


def tail_gain(train: list, labels: Sequence[str], weights, few: int = FEW_EVENTS) -> float:
    """On the device: how much better the shared scorer ranks than the owner's best counting on the
    last 20% of its training events (top-1 of the scorer minus top-1 of best counting; in [-1, 1]).

    Both are fit on the first 80% only (best counting makes its per-owner choice inside them, so its
    score on the rest is out of sample, like the scorer's). 0.0 for a device with at most `few`
    training events (it uses its own counts whatever the check says) or nothing to score. Held-out
    events are never looked at. This number is what a device reports, clipped and noised, to the
    federation's usefulness check (`federation.habit_check`); it never leaves the device in the clear.
    """
    from personal.evaluate import BestCounting, chronological_split, topk

    fit, val = chronological_split(train, 0.2)
    if len(train) <= few or not fit or not val:
        return 0.0
    truths = [q.target.event for q in val]
    best = BestCounting(fit)
    floor = topk([best.rank(q) for q in val], truths)["top1"]
    z, names = _scorer_logits(fit, val, labels, weights)
    order = np.argsort(-z, axis=1, kind="stable")[:, :1]
    return float(topk([[names[j] for j in row] for row in order], truths)["top1"] - floor)


def next_event_probs(history: Sequence["Event"], at: datetime, weights: dict[str, np.ndarray] | None = None,
                     vocabulary: Sequence[str] = ()) -> tuple[list[str], np.ndarray, HabitChoice]:
    """`suggest`'s habit predictor: every candidate next event at `at`, its probability and the choice.

    `history` (every event before `at`, chronological) is both the training events and the query's
    history, so this is `habit_log_softmax` for one query at `at`. The probabilities of a counting
    predictor that only ranks (most frequent, Markov, hour, slot) are the softmax of minus the rank:
    an order, not a calibrated probability. No candidate at all: ([], empty array).
    """
    from personal.evaluate import Query
    from personal.habits import HabitError
    from personal.vault import Event

    history = list(history)
    if weights is not None and np.shape(weights.get("b")) != (len(vocabulary),):
        raise HabitError(f"shared weights cover {np.shape(weights.get('b'))} events, the vocabulary {len(vocabulary)}")
    target = Event(history[-1].user if history else "owner", at, "?")  # the unknown next event: only its time is read
    z, names, choice = habit_log_softmax(history, [Query(history, target)], vocabulary, weights)
    if not names:
        return [], np.zeros(0), choice
    p = np.exp(z[0])
    return names, p / p.sum(), choice
