"""The counting baselines of personal.evaluate against hand-computed cases."""

from __future__ import annotations

from datetime import datetime, timedelta

from personal.evaluate import (BASELINES, BestCounting, HourFrequency, Markov, MostFrequent, Query, SlotFrequency,
                               SmoothedMix, baseline_scores, choose_counting, chronological_split, topk)
from personal.vault import Event

MON = datetime(2026, 3, 2)  # a Monday


def ev(name: str, at: datetime) -> Event:
    return Event("u", at, name)


def q(history: list[Event], name: str, at: datetime) -> Query:
    return Query(history, ev(name, at))


def _clock_owner(days: int = 20) -> list[Event]:
    """Gym at 07:00, Coffee at 10:00 and 15:00, every day: Coffee is the most frequent overall."""
    out = []
    for d in range(days):
        day = MON + timedelta(days=d)
        out += [ev("Gym", day.replace(hour=7)), ev("Coffee", day.replace(hour=10)), ev("Coffee", day.replace(hour=15))]
    return out


def test_hour_frequency_ranks_by_count_at_the_hour_then_overall():
    train = _clock_owner(5)
    at = MON.replace(hour=7) + timedelta(days=30)
    assert MostFrequent(train).rank(q(train, "Gym", at)) == ["Coffee", "Gym"]
    assert HourFrequency(train).rank(q(train, "Gym", at)) == ["Gym", "Coffee"]
    # an hour with no events falls back to the overall order
    assert HourFrequency(train).rank(q(train, "Gym", at.replace(hour=3))) == ["Coffee", "Gym"]


def test_slot_frequency_separates_weekends_from_weekdays():
    train = []
    for d in range(14):
        day = MON + timedelta(days=d)
        # weekday mornings: Office (5 a week); Saturday and Sunday mornings: Market (2 a week)
        train.append(ev("Office" if day.weekday() < 5 else "Market", day.replace(hour=10)))
    saturday = MON + timedelta(days=19, hours=10)
    tuesday = MON + timedelta(days=15, hours=10)
    assert MostFrequent(train).rank(q(train, "Market", saturday))[0] == "Office"
    assert HourFrequency(train).rank(q(train, "Market", saturday))[0] == "Office"  # same hour every day
    assert SlotFrequency(train).rank(q(train, "Market", saturday)) == ["Market", "Office"]
    assert SlotFrequency(train).rank(q(train, "Office", tuesday)) == ["Office", "Market"]


def test_smoothed_mix_uses_the_previous_event():
    # One event a week, same weekday and hour (so hour and slot shares equal the overall ones).
    # A is the most frequent (1/3); after C always comes B (1/6 overall).
    names = ["A", "C", "B", "A", "E", "F"] * 6
    train = [ev(n, MON.replace(hour=12) + timedelta(days=7 * i)) for i, n in enumerate(names)]
    week = timedelta(days=7)
    at = train[-1].timestamp + week
    hist_c = train + [ev("C", at)]
    # mix(B) = (3 * 1/6 + (6 + 2/6) / 8) / 4 = 0.32 > mix(A) = (3 * 1/3 + (2/3) / 8) / 4 = 0.27
    assert SmoothedMix(train).rank(q(hist_c, "B", at + week))[0] == "B"
    assert MostFrequent(train).rank(q(hist_c, "B", at + week))[0] == "A"
    assert SmoothedMix(train).rank(q(train, "A", at))[0] == "A"  # after F comes A


def _early_gym_owner(days: int = 10) -> list[Event]:
    """Gym at 07:00, then three coffees 08:00-08:40: only the hour predictor gets the 07:00 Gym right.

    Overall, the early-morning slot and "after Coffee" all favour Coffee; the mix averages them.
    """
    out = []
    for d in range(days):
        day = MON + timedelta(days=d)
        out += [ev("Gym", day.replace(hour=7)), ev("Coffee", day.replace(hour=8)),
                ev("Coffee", day.replace(hour=8, minute=20)), ev("Coffee", day.replace(hour=8, minute=40))]
    return out


def test_best_counting_picks_the_hour_predictor_where_only_the_hour_knows():
    train = _early_gym_owner()
    assert choose_counting(train) == "hour"
    best = BestCounting(train)
    assert best.choice == "hour"
    at = MON.replace(hour=7) + timedelta(days=40)
    assert best.rank(q(train, "Gym", at))[0] == "Gym"
    assert SmoothedMix(train).rank(q(train, "Gym", at))[0] == "Coffee"


def test_best_counting_is_chosen_on_training_events_only():
    """The choice depends on the training events alone: held-out events that contradict it change nothing."""
    events = _early_gym_owner(12)
    train, queries = chronological_split(events, 0.2)
    liar = [Query(x.history, ev("Coffee", x.target.timestamp)) for x in queries]  # every held-out event is Coffee
    s_true, s_liar = baseline_scores(train, queries), baseline_scores(train, liar)
    assert BestCounting(train).choice == "hour"
    assert s_true["best_counting"] == s_true["hour"] and s_liar["best_counting"] == s_liar["hour"]
    assert s_liar["most_frequent"]["top1"] > s_liar["hour"]["top1"]  # on the liar's queries "most frequent" wins, unused


def test_ties_go_to_the_fixed_order():
    train = [ev("Only", MON + timedelta(hours=i)) for i in range(10)]
    assert choose_counting(train) == "mix"  # everyone is perfect: the first of TIE_ORDER


def test_baseline_scores_keeps_old_keys_and_adds_new_ones():
    train, queries = chronological_split(_clock_owner(10), 0.2)
    scores = baseline_scores(train, queries)
    assert set(scores) == set(BASELINES) >= {"most_frequent", "markov"}
    truths = [x.target.event for x in queries]
    assert scores["most_frequent"] == topk([MostFrequent(train).rank(x) for x in queries], truths)
    assert scores["hour"]["top1"] == 1.0 and scores["most_frequent"]["top1"] < 0.7


def test_simulations_report_every_baseline_overall_and_per_group():
    """results.json's baselines and groups carry the new baselines next to the old keys."""
    from simulations.devices import baselines
    from simulations.populations import SyntheticConfig, synthetic
    from simulations.runner import _groups

    pop = synthetic(SyntheticConfig(devices=4, days_median=14, seed=3))
    means, per_user = baselines(pop, max_events=80)
    for name in BASELINES:
        assert 0.0 <= means[f"{name}_top1"] <= means[f"{name}_top5"] <= 1.0
    assert means["best_counting_top1"] == sum(s["best_counting"]["top1"] for s in per_user.values()) / 4
    rows = [{"user": u, "group": "rest", "top1": 0.5, "top5": 0.7} for u in per_user]
    group = _groups(rows, per_user)["rest"]
    assert group["best_counting_top1"] == means["best_counting_top1"]
    assert {"markov_top1", "most_frequent_top1", "hour_top1", "slot_top1", "mix_top1"} <= set(group)


def test_summary_table_shows_best_counting(capsys, tmp_path):
    """`homebody simulate` / `make demo` print every counting baseline, best counting included."""
    from simulations.cli_simulate import print_summary

    base = {f"{name}_{k}": 0.1 * (i + 1) for i, name in enumerate(BASELINES) for k in ("top1", "top5")}
    results = {"config": {"dataset": "synthetic", "mode": "federated", "engine": "fast"}, "population": {"devices": 2},
               "privacy": {"private": False}, "baselines": base, "final": None, "status": "complete"}
    print_summary(results, tmp_path)
    out = capsys.readouterr().out
    assert "best counting (baseline)" in out and "0.600" in out
    assert "most frequent (baseline)" in out and "smoothed mix (baseline)" in out


def test_counting_scores_fits_each_predictor_once(monkeypatch):
    """`choose_counting` runs on every `suggest` now (issue 14 item 3): each counting predictor is fit
    once on the first 80% and ranks every validation event, not refit per event (quadratic: seconds
    for an owner with a few thousand events). Same scores as fitting per event."""
    import personal.evaluate as evaluate

    events = _clock_owner(60)
    fits: list[str] = []

    def counted(name: str, cls: type) -> type:
        """The real predictor, noting each fit."""
        def init(self, train) -> None:
            fits.append(name)
            cls.__init__(self, train)
        return type(f"Counted{cls.__name__}", (cls,), {"__init__": init})

    wrapped = {name: counted(name, cls) for name, cls in evaluate.COUNTING.items()}
    fit, val = evaluate.chronological_split(events, 0.2)
    per_event = {name: tuple(evaluate.topk([cls(fit).rank(x) for x in val], [x.target.event for x in val]).values())
                 for name, cls in evaluate.COUNTING.items()}
    monkeypatch.setattr(evaluate, "COUNTING", wrapped)
    scores = evaluate.counting_scores(events)
    assert sorted(fits) == sorted(evaluate.TIE_ORDER)  # one fit per predictor
    assert scores == per_event
