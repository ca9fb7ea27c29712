"""The owner's habit statistics: ONE function counts them, everything else reads them.

`HabitStats.from_events(events)` counts, per event name of the owner's vocabulary: overall, per
hour of day, per weekday, per weekday x part-of-day slot, after each previous event (transitions)
and when it last happened. `habit_features(stats, history, at)` turns them, for one query (the
events so far and the time of the next one), into a small matrix of features per candidate:
log shares smoothed towards the overall share, recency, "is the previous event", "seen before".

The counting baselines (personal.evaluate), the habit-aware scorer (below; its shared weights are
learnt across devices by federation.habit_round) and the simulations all use these two functions.
The statistics are computed on the device from the vault's events and never leave it: what a
device sends is only a clipped, noised change of the scorer's shared weights.

The scorer is log-linear: score(v) = w . f(v) + b[v], softmax over the candidates, where f are
the habit features, w a handful of shared weights and b a shared per-event bias over the
population's vocabulary (what a cold-start owner falls back on). With w = e_0 (weight 1 on the
overall log share) and b = 0 it ranks exactly like "most frequent", so it starts at counting
quality and learns what to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

import numpy as np

from privacy.errors import HomebodyError

if TYPE_CHECKING:
    from personal.vault import Event

PARTS = ("night", "early morning", "morning", "midday", "afternoon", "evening")
N_SLOTS = 7 * len(PARTS)
FEATURES = ("log_share", "log_share_hour", "log_share_hour3", "log_share_weekday", "log_share_slot",
            "log_share_after", "recency", "is_previous", "seen")
ALPHA = 1.0  # overall share: add-one over the candidates (chosen a priori, never tuned on held-out events)
BETA = 2.0  # conditional shares: pseudo-counts of the overall share they back off to
RECENCY_CAP_H = 24.0 * 365  # an event never seen counts as last seen a year ago
WARMUP = 0.5  # training examples start after this share of the training events (see training_batch)


class HabitError(HomebodyError):
    """Bad input to the habit statistics or the habit scorer."""


def part_index(hour: int) -> int:
    """Index in PARTS of personal.examples.part_of_day(hour) (night wraps around midnight)."""
    from personal.examples import part_of_day

    return PARTS.index(part_of_day(hour))


def slot_of(at: datetime) -> int:
    """Weekday x part-of-day slot of a local wall-clock time (0..41)."""
    return at.weekday() * len(PARTS) + part_index(at.hour)


def _seconds(at: datetime) -> float:
    # Local wall clock, as personal.examples reads it: an aware timestamp keeps its own offset.
    return at.replace(tzinfo=None).timestamp()


@dataclass
class HabitStats:
    """Per-event counts of one owner (rows follow `vocab`). Built by `from_events`, grown by `add`."""

    vocab: tuple[str, ...]
    overall: np.ndarray
    hour: np.ndarray  # (24, V)
    weekday: np.ndarray  # (7, V)
    slot: np.ndarray  # (N_SLOTS, V)
    after: np.ndarray  # (V, V): after[a, b] = times b came right after a
    last_seen: np.ndarray  # (V,) local seconds of the last occurrence, -inf if none
    n: int = 0
    prev: int = -1  # index of the last counted event (-1: none / outside the vocabulary)
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, vocab: Sequence[str]) -> "HabitStats":
        """No events counted yet, over a fixed vocabulary (sorted, de-duplicated)."""
        vocab = tuple(sorted(set(vocab)))
        v = len(vocab)
        return cls(vocab, np.zeros(v), np.zeros((24, v)), np.zeros((7, v)), np.zeros((N_SLOTS, v)), np.zeros((v, v)),
                   np.full(v, -np.inf), 0, -1, {e: i for i, e in enumerate(vocab)})

    @classmethod
    def from_events(cls, events: Sequence["Event"], vocab: Sequence[str] | None = None) -> "HabitStats":
        """THE habit-statistics function: count chronological `events` (over `vocab`, default their names)."""
        events = list(events)
        bad = next((e for e in events if not (isinstance(getattr(e, "event", None), str)
                                              and isinstance(getattr(e, "timestamp", None), datetime))), None)
        if bad is not None:
            raise HabitError(f"habit statistics need events with a name and a datetime, got {bad!r}")
        stats = cls.empty(vocab if vocab is not None else [e.event for e in events])
        for ev in events:
            stats.add(ev)
        return stats

    def add(self, ev: "Event") -> None:
        """Count one more event (later than every counted one); names outside the vocabulary only break chains."""
        i = self.index.get(ev.event, -1)
        if i >= 0:
            at = ev.timestamp
            self.overall[i] += 1
            self.hour[at.hour, i] += 1
            self.weekday[at.weekday(), i] += 1
            self.slot[slot_of(at), i] += 1
            if self.prev >= 0:
                self.after[self.prev, i] += 1
            self.last_seen[i] = _seconds(at)
            self.n += 1
        self.prev = i

    def shares(self) -> np.ndarray:
        """Overall share of each vocabulary event (zeros when nothing is counted)."""
        return self.overall / max(1, self.n)


def _log_backoff(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """log of counts smoothed towards `prior` with BETA pseudo-counts."""
    return np.log((counts + BETA * prior) / (counts.sum() + BETA))


def habit_features(stats: HabitStats, history: Sequence["Event"], at: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Features (V, F) for the owner's vocabulary and (F,) for an event never seen, at time `at`.

    `history` is every event before `at` (chronological); only its last event (for "after") and
    the last occurrence of each name (recency) are read from it: the counts come from `stats`.
    Every event outside the vocabulary has the same features (the second result).
    """
    v = len(stats.vocab)
    pad = lambda a: np.append(a, 0.0)  # noqa: E731 - the last column is "never seen"
    overall = pad(stats.overall)
    prior = (overall + ALPHA / (v + 1)) / (stats.n + ALPHA)
    h = at.hour
    prev = stats.index.get(history[-1].event, -1) if history else -1
    cols = [
        np.log(prior),
        _log_backoff(pad(stats.hour[h]), prior),
        _log_backoff(pad(stats.hour[(h - 1) % 24] + stats.hour[h] + stats.hour[(h + 1) % 24]), prior),
        _log_backoff(pad(stats.weekday[at.weekday()]), prior),
        _log_backoff(pad(stats.slot[slot_of(at)]), prior),
        _log_backoff(pad(stats.after[prev]) if prev >= 0 else np.zeros(v + 1), prior),
        -np.log1p(_gaps_hours(stats, history, at) / 24.0),
        np.append(np.arange(v) == prev, False).astype(float),
        (overall > 0).astype(float),
    ]
    x = np.stack(cols, axis=1)
    return x[:v], x[v]


def _gaps_hours(stats: HabitStats, history: Sequence["Event"], at: datetime) -> np.ndarray:
    """Hours since each vocabulary event last happened (counted or in `history`), capped; last entry: never."""
    last = stats.last_seen.copy()
    for ev in history[-50:]:  # recent history is enough: older occurrences hit the cap anyway
        i = stats.index.get(ev.event, -1)
        if i >= 0:
            last[i] = max(last[i], _seconds(ev.timestamp))
    gaps = np.minimum((_seconds(at) - last) / 3600.0, RECENCY_CAP_H)
    return np.append(np.maximum(gaps, 0.0), RECENCY_CAP_H)


# --------------------------------------------------------------------------- the habit scorer


@dataclass(frozen=True)
class ScorerShape:
    """What the shared weights look like: the feature weights and the population vocabulary."""

    vocabulary: tuple[str, ...]  # the shared event vocabulary (public label space), sorted

    def __post_init__(self) -> None:
        vocab = tuple(self.vocabulary)
        if not all(isinstance(v, str) and v for v in vocab) or len(set(vocab)) != len(vocab):
            raise HabitError("the shared vocabulary must be distinct, non-empty event names")
        object.__setattr__(self, "vocabulary", vocab)

    @property
    def n_features(self) -> int:
        return len(FEATURES)


def initial_weights(shape: ScorerShape) -> dict[str, np.ndarray]:
    """w = weight 1 on the overall log share, b = 0: ranks like "most frequent" before any learning."""
    w = np.zeros(shape.n_features, np.float32)
    w[0] = 1.0
    return {"w": w, "b": np.zeros(len(shape.vocabulary), np.float32)}


@dataclass
class QueryBatch:
    """A device's queries as arrays, over its candidates (shared vocabulary + its own other events).

    x: (n, k, F) features of the owner's k vocabulary events; u: (n, F) features of every other
    candidate; own: (k,) their positions among the candidates; target: (n,) candidate position of
    the truth (-1 if it is no candidate); candidates: names. Stays on the device.
    """

    x: np.ndarray
    u: np.ndarray
    own: np.ndarray
    target: np.ndarray
    candidates: list[str]
    n_shared: int

    def __len__(self) -> int:
        return len(self.target)


def _candidates(own_vocab: Sequence[str], shape: ScorerShape) -> tuple[list[str], np.ndarray]:
    shared = list(shape.vocabulary)
    pos = {e: i for i, e in enumerate(shared)}
    extra = [e for e in own_vocab if e not in pos]
    cands = shared + extra
    pos.update({e: len(shared) + i for i, e in enumerate(extra)})
    return cands, np.array([pos[e] for e in own_vocab], dtype=np.int64)


def _batch(rows: list[tuple[np.ndarray, np.ndarray, str]], vocab: Sequence[str], shape: ScorerShape) -> QueryBatch:
    cands, own = _candidates(vocab, shape)
    pos = {e: i for i, e in enumerate(cands)}
    k, f = len(vocab), len(FEATURES)
    x = np.stack([r[0] for r in rows]).astype(np.float32) if rows else np.zeros((0, k, f), np.float32)
    u = np.stack([r[1] for r in rows]).astype(np.float32) if rows else np.zeros((0, f), np.float32)
    target = np.array([pos.get(r[2], -1) for r in rows], dtype=np.int64)
    return QueryBatch(x, u, own, target, cands, len(shape.vocabulary))


def training_batch(train: Sequence["Event"], shape: ScorerShape, start_frac: float = WARMUP) -> QueryBatch:
    """Prequential examples from the training events: event i is predicted from the counts of events[:i].

    Only events after the first `start_frac` of them are examples: predicted from many counts, like
    held-out events are (the very first events of an owner are nearly all new and would teach the
    scorer to distrust counts).
    """
    vocab = sorted({e.event for e in train})
    stats, rows = HabitStats.empty(vocab), []
    first = min(len(train) - 1, max(1, int(len(train) * start_frac)))
    for i, ev in enumerate(train):
        if i >= first:
            x, u = habit_features(stats, train[:i], ev.timestamp)
            rows.append((x, u, ev.event))
        stats.add(ev)
    return _batch(rows, vocab, shape)


def query_batch(train: Sequence["Event"], queries: Sequence, shape: ScorerShape) -> QueryBatch:
    """Held-out queries (personal.evaluate.Query) scored from the counts of the training events."""
    stats = HabitStats.from_events(train)
    rows = [(*habit_features(stats, q.history, q.target.timestamp), q.target.event) for q in queries]
    return _batch(rows, stats.vocab, shape)


def logits(weights: dict[str, np.ndarray], batch: QueryBatch) -> np.ndarray:
    """(n, candidates) scores: w . features + b (b is 0 for the owner's events outside the shared vocabulary)."""
    w, b = weights["w"].astype(np.float64), weights["b"].astype(np.float64)
    bias = np.concatenate([b, np.zeros(len(batch.candidates) - batch.n_shared)])
    out = bias[None, :] + (batch.u @ w)[:, None]
    out[:, batch.own] = bias[batch.own][None, :] + batch.x @ w
    return out


def loss_and_grad(weights: dict[str, np.ndarray], batch: QueryBatch, l2: float = 1e-3) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy over the batch (+ l2 on the change of w from its start) and its gradient."""
    sel = batch.target >= 0
    n = int(sel.sum())
    if n == 0:
        return 0.0, {"w": np.zeros_like(weights["w"]), "b": np.zeros_like(weights["b"])}
    z = logits(weights, batch)[sel]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    t = batch.target[sel]
    loss = float(-np.log(p[np.arange(n), t] + 1e-300).mean())
    x, u = batch.x[sel].astype(np.float64), batch.u[sel].astype(np.float64)
    p_own = p[:, batch.own]
    expected = np.einsum("nk,nkf->nf", p_own, x) + (1.0 - p_own.sum(axis=1))[:, None] * u
    own_of = {int(c): j for j, c in enumerate(batch.own)}
    f_true = np.stack([x[i, own_of[c]] if c in own_of else u[i] for i, c in enumerate(t)])
    w0 = np.zeros(len(FEATURES))
    w0[0] = 1.0
    gw = (expected - f_true).mean(axis=0) + l2 * (weights["w"] - w0)
    p[np.arange(n), t] -= 1.0
    gb = p[:, : batch.n_shared].mean(axis=0)
    return loss, {"w": gw.astype(np.float32), "b": gb.astype(np.float32)}


def local_update(weights: dict[str, np.ndarray], batch: QueryBatch, steps: int, lr: float) -> dict[str, np.ndarray]:
    """`steps` of full-batch gradient descent from `weights` on one device's batch; returns the change."""
    cur = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    for _ in range(steps):
        _, g = loss_and_grad(cur, batch)
        for k in cur:
            cur[k] -= lr * g[k]
    return {k: (cur[k] - weights[k]).astype(np.float32) for k in cur}


def rankings(weights: dict[str, np.ndarray], batch: QueryBatch, k: int | None = None) -> list[list[str]]:
    """Candidates ranked by score per query (ties by candidate order), the first `k` of each."""
    order = np.argsort(-logits(weights, batch), axis=1, kind="stable")
    if k is not None:
        order = order[:, :k]
    return [[batch.candidates[j] for j in row] for row in order]


def topk_hits(weights: dict[str, np.ndarray], batch: QueryBatch, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of the scorer on a batch (the truth outside the candidates is a miss)."""
    if len(batch) == 0:
        return {f"top{k}": 0.0 for k in ks}
    z = logits(weights, batch)
    n = len(batch)
    safe = np.maximum(batch.target, 0)
    truth = z[np.arange(n), safe]
    # rank = candidates scoring strictly higher, plus ties placed before the truth (stable order)
    before = np.arange(z.shape[1])[None, :] < safe[:, None]
    higher = (z > truth[:, None]).sum(axis=1) + ((z == truth[:, None]) & before).sum(axis=1)
    ok = batch.target >= 0
    return {f"top{k}": float(np.mean(ok & (higher < k))) for k in ks}


def habit_distribution(history: Sequence["Event"], at: datetime, weights: dict[str, np.ndarray] | None = None,
                       vocabulary: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """Every candidate next event at `at` and its probability, from the owner's counts (on the device).

    The two raw predictors, without the on-device choice between them: `suggest` ranks with
    `personal.habit_predictor.next_event_probs` (the simulations' choice), which uses the scorer's
    scores exactly as here when it keeps the scorer.

    `history` is every event before `at`. With the federation's shared `weights` (over the shared
    `vocabulary`): the habit scorer's softmax over the shared vocabulary and the owner's events.
    Without: the smoothed mix of the owner's own shares (overall, hour, slot, after the previous
    event), what a device that never federated has. No candidate at all: ([], empty array).
    """
    stats = HabitStats.from_events(history)
    if weights is None:
        if not stats.vocab:
            return [], np.zeros(0)
        x, _ = habit_features(stats, history, at)
        p = np.exp(x[:, [0, 1, 4, 5]]).mean(axis=1)
        names = list(stats.vocab)
    else:
        shape = ScorerShape(tuple(vocabulary))
        if weights["b"].shape != (len(shape.vocabulary),):
            raise HabitError(f"shared weights cover {weights['b'].shape[0]} events, the vocabulary {len(shape.vocabulary)}")
        x, u = habit_features(stats, history, at)
        batch = _batch([(x, u, "")], stats.vocab, shape)
        z = logits(weights, batch)[0]
        p = np.exp(z - z.max())
        names = batch.candidates
    return names, p / p.sum()


def top_k(names: Sequence[str], probs: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The `k` most probable (name, probability) pairs (ties by candidate order)."""
    if k < 1:
        raise HabitError(f"k must be at least 1, got {k}")
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def suggest_from_habits(history: Sequence["Event"], at: datetime, weights: dict[str, np.ndarray] | None = None,
                        vocabulary: Sequence[str] = (), k: int = 5) -> list[tuple[str, float]]:
    """Top-`k` next events at `at` with probabilities: the best of `habit_distribution`."""
    if k < 1:
        raise HabitError(f"k must be at least 1, got {k}")
    return top_k(*habit_distribution(history, at, weights, vocabulary), k)


# --------------------------------------------------------------------------- the predictors of suggest

PREDICTORS = ("habit", "lora", "combined")
# What `suggest` ranks with unless told otherwise: the CLI (--predictor), the SDK (Assistant.suggest,
# AssistantConfig.predictor) and the API (?predictor=) all read this one constant, and so does
# simulations.config.SimulationConfig.predictor. "habit": personal.habit_predictor's on-device choice
# (the scorer with the vault's shared weights unless the owner's own best counting did better on
# their events or they have at most FEW_EVENTS, else the owner's own best counting) (docs/BENCHMARKS.md: the
# scorer 0.378 vs best counting 0.336 top-1 on foursquare-nyc's 1,082 users; an early 50-user run of
# the combinations with LoRA did not beat the scorer). To be revisited with the full ablation.
DEFAULT_PREDICTOR = "habit"
COMBINE_WEIGHT = 1.0  # combined = habit log-probabilities + this x the adapter's: fixed a priori, never tuned
FLOOR = 30.0  # a candidate a predictor cannot score sits this far (in log-probability) below its worst one


def check_predictor(name: str | None) -> str:
    """`name`, or DEFAULT_PREDICTOR for None; HabitError for anything not in PREDICTORS."""
    if name is None:
        return DEFAULT_PREDICTOR
    if name not in PREDICTORS:
        raise HabitError(f"unknown predictor {name!r}: use one of {', '.join(PREDICTORS)}")
    return name


def floor_unscored(scores: np.ndarray) -> np.ndarray:
    """Replace unscored (nan) entries by FLOOR below the row's lowest score."""
    if scores.size == 0 or not np.isnan(scores).any():
        return scores
    low = np.nanmin(np.where(np.isnan(scores), np.inf, scores), axis=-1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0.0)
    return np.where(np.isnan(scores), low - FLOOR, scores)


def combined_scores(habit: np.ndarray, lora_probs: np.ndarray, weight: float = COMBINE_WEIGHT) -> np.ndarray:
    """habit log-probabilities + weight * the LoRA model's log-probabilities (same label order)."""
    return habit + weight * np.log(np.clip(lora_probs, 1e-12, None))


def check_vocabulary(vocabulary: Sequence[str], own: Sequence[str]) -> None:
    """HabitError when shared weights' `vocabulary` has none of the owner's event names `own`.

    A federation's vocabulary is its population's event names, so an owner with events of which
    none is in it holds weights learnt for another population: ranking with them would suggest
    another population's events. An owner without events (cold start) has nothing to check.
    """
    own = set(own)
    if own and not own & set(vocabulary):
        raise HabitError(f"the stored shared habit weights cover {len(vocabulary)} event names, none of this profile's "
                         f"{len(own)}: they were learnt for another population (use the lora predictor, or replace them)")


# --------------------------------------------------------------------------- the shared weights on a device

ARTEFACT_KIND, ARTEFACT_NAME = "habit-scorer", "shared"  # where a device keeps the federation's scorer weights


def weights_to_bytes(weights: dict[str, np.ndarray], vocabulary: Sequence[str]) -> bytes:
    """The scorer's shared weights and their vocabulary as JSON bytes (a vault artefact)."""
    import json

    shape = ScorerShape(tuple(vocabulary))
    if np.shape(weights.get("b")) != (len(shape.vocabulary),) or np.shape(weights.get("w")) != (shape.n_features,):
        raise HabitError("shared weights do not match the vocabulary and the features")
    return json.dumps({"features": list(FEATURES), "vocabulary": list(shape.vocabulary),
                       "w": [float(x) for x in weights["w"]], "b": [float(x) for x in weights["b"]]}).encode()


def weights_from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Inverse of `weights_to_bytes`; HabitError on anything else (other features, wrong sizes, not JSON)."""
    import json

    try:
        doc = json.loads(data.decode())
        vocab = ScorerShape(tuple(doc["vocabulary"])).vocabulary
        w, b = np.asarray(doc["w"], np.float32), np.asarray(doc["b"], np.float32)
        ok = tuple(doc["features"]) == FEATURES and w.shape == (len(FEATURES),) and b.shape == (len(vocab),)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HabitError(f"not habit-scorer weights: {exc}") from None
    if not ok or not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise HabitError("habit-scorer weights with other features, wrong sizes or non-finite values")
    return {"w": w, "b": b}, vocab
