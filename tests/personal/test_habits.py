"""personal.habits: the one habit-statistics function, its features and the habit scorer (hand-computed cases)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from personal.habits import (ALPHA, BETA, FEATURES, HabitStats, ScorerShape, habit_features, initial_weights,
                             local_update, loss_and_grad, query_batch, rankings, slot_of, topk_hits, training_batch)
from personal.evaluate import MostFrequent, chronological_split
from personal.vault import Event

MON = datetime(2026, 3, 2)  # a Monday


def ev(name: str, at: datetime, user: str = "u") -> Event:
    return Event(user, at, name)


def test_counts_overall_hour_slot_after_and_last_seen():
    events = [ev("Gym", MON.replace(hour=7)), ev("Office", MON.replace(hour=9)), ev("Gym", MON.replace(hour=18)),
              ev("Gym", MON + timedelta(days=5, hours=7))]  # Saturday 07:00
    s = HabitStats.from_events(events)
    assert s.vocab == ("Gym", "Office")
    g, o = s.index["Gym"], s.index["Office"]
    assert s.overall.tolist() == [3, 1] and s.n == 4
    assert s.hour[7, g] == 2 and s.hour[9, o] == 1 and s.hour[18, g] == 1 and s.hour.sum() == 4
    assert s.weekday[0, g] == 2 and s.weekday[5, g] == 1
    # Monday early morning (slot 0*6+1), Saturday early morning (5*6+1)
    assert slot_of(MON.replace(hour=7)) == 1 and s.slot[1, g] == 1 and s.slot[31, g] == 1
    assert s.after[g, o] == 1 and s.after[o, g] == 1 and s.after[g, g] == 1 and s.after.sum() == 3
    assert s.last_seen[o] == MON.replace(hour=9).timestamp()


def test_aware_timestamps_count_in_their_own_wall_clock():
    tz = timezone(timedelta(hours=-5))
    s = HabitStats.from_events([ev("Bar", datetime(2026, 3, 2, 23, tzinfo=tz))])
    assert s.hour[23, 0] == 1 and s.weekday[0, 0] == 1


def test_features_are_the_hand_computed_smoothed_log_shares():
    events = [ev("A", MON.replace(hour=8)), ev("A", MON.replace(hour=9)), ev("B", MON.replace(hour=8))]
    s = HabitStats.from_events(events)
    at = MON.replace(hour=8) + timedelta(days=7)  # next Monday 08:00
    x, u = habit_features(s, events, at)
    assert x.shape == (2, len(FEATURES)) and u.shape == (len(FEATURES),)
    prior = np.array([2 + ALPHA / 3, 1 + ALPHA / 3, ALPHA / 3]) / (3 + ALPHA)
    assert x[:, 0] == pytest.approx(np.log(prior[:2]))
    assert u[0] == pytest.approx(math.log(prior[2]))
    # at hour 8: A once, B once (2 events), backed off with BETA pseudo-counts of the prior
    hour8 = (np.array([1, 1, 0]) + BETA * prior) / (2 + BETA)
    assert x[:, 1] == pytest.approx(np.log(hour8[:2])) and u[1] == pytest.approx(math.log(hour8[2]))
    # after the previous event (B): nothing followed B yet, so the share is the prior itself
    assert x[:, 5] == pytest.approx(np.log(prior[:2]))
    assert x[:, 7].tolist() == [0.0, 1.0] and u[7] == 0.0  # B is the previous event
    assert x[:, 8].tolist() == [1.0, 1.0] and u[8] == 0.0  # seen / never seen
    gap_a = (at - MON.replace(hour=9)).total_seconds() / 3600
    assert x[0, 6] == pytest.approx(-math.log1p(gap_a / 24))


def _owner(n_weeks: int = 6) -> list[Event]:
    """Gym every weekday at 07:00, Coffee at 10:00 and 15:00, Bar on Fridays at 21:00."""
    out = []
    for d in range(7 * n_weeks):
        day = MON + timedelta(days=d)
        if day.weekday() < 5:
            out += [ev("Gym", day.replace(hour=7)), ev("Coffee", day.replace(hour=10)), ev("Coffee", day.replace(hour=15))]
        if day.weekday() == 4:
            out.append(ev("Bar", day.replace(hour=21)))
    return out


def test_initial_scorer_ranks_like_most_frequent_and_learning_improves():
    events = _owner()
    train, queries = chronological_split(events, 0.2)
    shape = ScorerShape(("Bar", "Coffee", "Gym", "Museum"))
    w0 = initial_weights(shape)
    qb = query_batch(train, queries, shape)
    mf = MostFrequent(train)
    assert [r[: len(mf.order)] for r in rankings(w0, qb)] == [mf.rank(q) for q in queries]
    tb = training_batch(train, shape)
    w = {k: v.copy() for k, v in w0.items()}
    for _ in range(30):
        step = local_update(w, tb, steps=5, lr=0.5)
        w = {k: w[k] + step[k] for k in w}
    assert loss_and_grad(w, tb)[0] < loss_and_grad(w0, tb)[0]
    assert topk_hits(w, qb)["top1"] > topk_hits(w0, qb)["top1"]
    assert topk_hits(w, qb)["top1"] > 0.9  # the hour decides: this owner is a clock


def test_gradient_matches_finite_differences():
    train = _owner(3)
    shape = ScorerShape(("Bar", "Coffee", "Gym", "Museum"))
    batch = training_batch(train, shape)
    rng = np.random.default_rng(0)
    w = {"w": rng.normal(size=len(FEATURES)), "b": rng.normal(size=4) * 0.3}
    loss, grad = loss_and_grad(w, batch, l2=0.0)
    for key, i in (("w", 0), ("w", 5), ("b", 1), ("b", 3)):
        bumped = {k: v.copy() for k, v in w.items()}
        bumped[key][i] += 1e-6
        assert (loss_and_grad(bumped, batch, l2=0.0)[0] - loss) / 1e-6 == pytest.approx(grad[key][i], abs=1e-4)


def test_training_examples_never_see_their_own_target():
    """Prequential: the features of training event i come from events[:i] only."""
    events = [ev("A", MON + timedelta(hours=i)) for i in range(6)] + [ev("New", MON + timedelta(hours=7))]
    batch = training_batch(events, ScorerShape(("A", "New")), start_frac=0.0)
    new = batch.candidates.index("New")
    last = len(batch) - 1
    assert batch.target[last] == new
    j = list(batch.own).index(new)
    assert batch.x[last, j, 8] == 0.0  # "seen" is 0: New had not happened before it
    assert np.allclose(batch.x[last, j], batch.u[last])


def test_cold_start_owner_gets_population_vocabulary_and_bias_ranks_it():
    shape = ScorerShape(("Bar", "Coffee", "Gym", "Museum"))
    w = initial_weights(shape)
    w["b"] = np.array([0.0, 0.0, 0.0, 2.0], np.float32)  # the population likes museums
    train = [ev("Coffee", MON.replace(hour=10))]
    queries = chronological_split(train + [ev("Gym", MON.replace(hour=12))], 0.5)[1]
    top = rankings(w, query_batch(train, queries, shape))[0]
    assert set(top) == {"Bar", "Coffee", "Gym", "Museum"}
    assert top[0] == "Museum"


def test_bad_input_is_one_typed_error():
    from personal.habits import HabitError
    from privacy.errors import HomebodyError

    with pytest.raises(HabitError) as info:
        HabitStats.from_events([ev("A", MON), ("B", MON)])  # a tuple is not an event
    assert isinstance(info.value, HomebodyError)
    for bad in (("A", "A"), ("A", ""), ("A", 3)):
        with pytest.raises(HabitError):
            ScorerShape(bad)


def test_suggest_from_habits_with_and_without_shared_weights():
    from personal.habits import HabitError, suggest_from_habits

    history = _owner(2)
    at = MON + timedelta(days=14, hours=7)  # a Monday 07:00
    own = suggest_from_habits(history, at, k=3)
    assert own[0][0] == "Gym" and len(own) == 3
    assert sum(p for _, p in suggest_from_habits(history, at, k=10)) == pytest.approx(1.0)
    shape = ScorerShape(("Bar", "Coffee", "Gym", "Museum"))
    w = initial_weights(shape)
    assert suggest_from_habits(history, at, w, shape.vocabulary, k=1)[0][0] == "Coffee"  # most frequent
    w["w"][:] = 0.0
    w["w"][1] = 1.0  # trust the hour
    shared = suggest_from_habits(history, at, w, shape.vocabulary, k=4)
    assert shared[0][0] == "Gym" and {n for n, _ in shared} == {"Bar", "Coffee", "Gym", "Museum"}
    assert suggest_from_habits([], at) == []
    with pytest.raises(HabitError):
        suggest_from_habits(history, at, w, ("Bar", "Coffee"))
    with pytest.raises(HabitError):
        suggest_from_habits(history, at, k=0)


def test_cli_suggest_from_own_habit_counts(tmp_path, monkeypatch, capsys):
    """`homebody suggest --habits`: the owner's own counts, no model; one-line error for an unknown profile."""
    import hashlib
    import sys

    from personal.vault import Vault, VaultConfig
    from simulations import cli
    from tests.personal.pers_helpers import routine_owner

    def homebody(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["homebody", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out = capsys.readouterr()
        return exit_.value.code, out.out, out.err

    monkeypatch.setenv("HOMEBODY_PASSPHRASE", "pw")
    path = tmp_path / "v.db"
    with Vault.create(path, "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(routine_owner("ana", weeks=4))  # Gym Mon/Wed/Fri 07:00, Coffee Shop ~08:15 most days
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, out, err = homebody("suggest", "--profile", "ana", "--habits", "--at", "2026-02-02T07:00", "-k", "2",
                              "--vault", str(path))
    assert code in (0, None), err
    line = out.splitlines()[0]
    assert line.startswith("Mon 07:00 — Gym ") and line.count(",") == 1
    assert "nothing released" in out
    code, out, err = homebody("suggest", "--profile", "bob", "--habits", "--vault", str(path))
    assert code == 1 and len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
