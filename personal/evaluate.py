"""Next-event evaluation: a chronological split, top-k accuracy, and the baselines every model faces.

Per owner, the last ``test_frac`` (20%) of the events are held out. Each held-out event is a query
whose history is every event before it (earlier held-out events included, as on a real device).
Baselines (reused by the simulations):

- ``MostFrequent``: the owner's most frequent training events, in order.
- ``Markov``: per-user first-order Markov chain over training transitions; the ranking after
  event ``a`` is ``a``'s successors by count, then the remaining events by overall frequency.
- ``HourFrequency``: the owner's training events by count at the query's hour of day, then by
  overall count (personal.habits statistics, like every counting baseline below).
- ``SlotFrequency``: the same in the query's weekday x part-of-day slot (7 x 6 slots).
- ``SmoothedMix``: the mean of four shares, each smoothed towards the overall share: overall,
  at this hour, in this slot, after the previous event.
- ``BestCounting``: per owner, whichever of most-frequent, Markov, hour, slot and the mix wins
  (top-1, then top-5, then that order) on the last 20% of the owner's TRAINING events when fit on
  the first 80%; then refit on all training events. Held-out events are never looked at.
- ``zero_shot_rankings``: the base model WITHOUT an adapter: labels ranked by cosine similarity
  between the pooled embedding of the query context and that of each label name.
- ``model_rankings``: a personalised model (adapter loaded) ranks labels by probability.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from personal.examples import context_text

if TYPE_CHECKING:
    from personal.training import PersonalModel
    from personal.vault import Event

KS = (1, 5)


@dataclass(frozen=True)
class Query:
    """One held-out event: the history before it and the truth."""

    history: Sequence["Event"]
    target: "Event"


def chronological_split(events: Sequence["Event"], test_frac: float = 0.2) -> tuple[list["Event"], list[Query]]:
    """(training events, held-out queries): the last ``test_frac`` of the events are the queries."""
    events = list(events)
    n_test = int(round(len(events) * test_frac))
    if len(events) >= 2:
        n_test = min(max(1, n_test), len(events) - 1)
    cut = len(events) - n_test
    return events[:cut], [Query(events[:i], events[i]) for i in range(cut, len(events))]


def query_texts(queries: Sequence[Query], history: int = 3) -> list[str]:
    """The model's input for each query (the one serialisation, ``context_text``)."""
    return [context_text(q.history[-history:] if history else [], q.target.timestamp, q.target.context, k=history)
            for q in queries]


class MostFrequent:
    """Rank events by training frequency (ties by name)."""

    def __init__(self, train: Sequence["Event"]) -> None:
        counts = Counter(e.event for e in train)
        self.order = [e for e, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def rank(self, q: Query) -> list[str]:
        """The same ranking for every query."""
        return self.order


class Markov(MostFrequent):
    """Per-user first-order Markov chain, backed off to frequency."""

    def __init__(self, train: Sequence["Event"]) -> None:
        super().__init__(train)
        self.next: dict[str, Counter] = defaultdict(Counter)
        for a, b in zip(train, train[1:]):
            self.next[a.event][b.event] += 1

    def rank(self, q: Query) -> list[str]:
        """Successors of the last event by count, then the rest by frequency."""
        if not q.history:
            return self.order
        succ = self.next.get(q.history[-1].event)
        if not succ:
            return self.order
        head = [e for e, _ in sorted(succ.items(), key=lambda kv: (-kv[1], kv[0]))]
        seen = set(head)
        return head + [e for e in self.order if e not in seen]


class _HabitCounting:
    """A counting predictor over the owner's habit statistics: rank by `_scores`, ties by name."""

    def __init__(self, train: Sequence["Event"]) -> None:
        from personal.habits import HabitStats

        self.stats = HabitStats.from_events(train)

    def _scores(self, q: Query) -> np.ndarray:
        raise NotImplementedError

    def rank(self, q: Query) -> list[str]:
        """The owner's vocabulary by score (the vocabulary is sorted, so a stable sort breaks ties by name)."""
        order = np.argsort(-self._scores(q), kind="stable")
        return [self.stats.vocab[i] for i in order]


class HourFrequency(_HabitCounting):
    """Count at the query's hour of day, then overall count."""

    def _scores(self, q: Query) -> np.ndarray:
        s = self.stats
        return s.hour[q.target.timestamp.hour] + s.overall / (s.n + 1.0)


class SlotFrequency(_HabitCounting):
    """Count in the query's weekday x part-of-day slot, then overall count."""

    def _scores(self, q: Query) -> np.ndarray:
        from personal.habits import slot_of

        s = self.stats
        return s.slot[slot_of(q.target.timestamp)] + s.overall / (s.n + 1.0)


class SmoothedMix(_HabitCounting):
    """Mean of the overall, hour, slot and after-previous shares, each smoothed towards the overall one."""

    def _scores(self, q: Query) -> np.ndarray:
        from personal.habits import habit_features

        x, _ = habit_features(self.stats, q.history, q.target.timestamp)
        return np.exp(x[:, [0, 1, 4, 5]]).mean(axis=1)


COUNTING = {"most_frequent": MostFrequent, "markov": Markov, "hour": HourFrequency, "slot": SlotFrequency,
            "mix": SmoothedMix}
TIE_ORDER = ("mix", "most_frequent", "markov", "slot", "hour")  # fixed a priori: the smoothest first


def counting_scores(train: Sequence["Event"], val_frac: float = 0.2) -> dict[str, tuple[float, float]]:
    """(top-1, top-5) of each counting predictor on the last `val_frac` of the TRAINING events, fit on the rest.

    Empty when the owner has too few events to split.
    """
    fit, val = chronological_split(train, val_frac)
    if not fit or not val:
        return {}
    truths = [q.target.event for q in val]
    out = {}
    for name in TIE_ORDER:
        model = COUNTING[name](fit)  # fit once: ranking does not change it
        s = topk([model.rank(q) for q in val], truths)
        out[name] = (s["top1"], s["top5"])
    return out


def choose_counting(train: Sequence["Event"], val_frac: float = 0.2) -> str:
    """The counting predictor that wins on the last `val_frac` of the TRAINING events (fit on the rest)."""
    scores = counting_scores(train, val_frac)
    if not scores:
        return TIE_ORDER[0]
    return max(scores, key=lambda name: (*scores[name], -TIE_ORDER.index(name)))


class BestCounting:
    """Per owner: the counting predictor chosen on training events only (`choose_counting`), refit on all."""

    def __init__(self, train: Sequence["Event"]) -> None:
        self.choice = choose_counting(train)
        self.model = COUNTING[self.choice](train)

    def rank(self, q: Query) -> list[str]:
        """The chosen predictor's ranking."""
        return self.model.rank(q)


def topk(rankings: Sequence[Sequence[str]], truths: Sequence[str], ks: Sequence[int] = KS) -> dict[str, float]:
    """Top-k accuracy for each k, as ``{"top1": .., "top5": ..}``."""
    n = max(1, len(truths))
    return {f"top{k}": sum(t in list(r[:k]) for r, t in zip(rankings, truths)) / n for k in ks}


BASELINES = ("most_frequent", "markov", "hour", "slot", "mix", "best_counting")


def baseline_scores(train: Sequence["Event"], queries: Sequence[Query]) -> dict[str, dict[str, float]]:
    """Top-1/top-5 of every counting baseline (BASELINES), fit on `train` only."""
    truths = [q.target.event for q in queries]
    models = {name: COUNTING[name](train) for name in BASELINES[:-1]}
    models["best_counting"] = BestCounting(train)
    return {name: topk([model.rank(q) for q in queries], truths) for name, model in models.items()}


def _ranked(scores: np.ndarray, labels: Sequence[str]) -> list[list[str]]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return [[labels[j] for j in row] for row in order]


def model_rankings(pm: "PersonalModel", texts: Sequence[str], max_length: int = 64) -> list[list[str]]:
    """Labels ranked by the loaded adapter's probabilities."""
    return _ranked(pm.predict_proba(texts, max_length=max_length), pm.labels)


def zero_shot_rankings(pm: "PersonalModel", texts: Sequence[str], labels: Sequence[str],
                       max_length: int = 64) -> list[list[str]]:
    """The base without adapter: cosine similarity of context and label-name embeddings.

    The caller clears the adapter first (``pm.clear()``) so LoRA is at its identity.
    """
    q = pm.embed(texts, max_length=max_length)
    lab = pm.embed(list(labels), max_length=max_length)
    return _ranked(q @ lab.T, list(labels))
