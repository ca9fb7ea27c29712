"""The one serialisation: events → context text → examples."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from personal.examples import LM, NEXT, context_text, events_to_examples, label_space
from personal.vault import Event


def _ev(ts: datetime, name: str, **kw) -> Event:
    return Event("ana", ts, name, **kw)


def test_context_text_format_is_stable() -> None:
    at = datetime(2026, 1, 7, 6, 55)  # a Wednesday
    hist = [_ev(at - timedelta(days=2), "Gym"), _ev(at - timedelta(hours=20), "Office"),
            _ev(at - timedelta(minutes=125), "Coffee Shop")]
    assert context_text(hist, at, {"weather": "rain", "city": "NYC"}) == (
        "Wed 06:55 early morning. Last: Coffee Shop, 2 h ago. Before: Office, Gym. city: NYC. weather: rain.")
    assert context_text([], at, {}) == "Wed 06:55 early morning. Last: nothing."
    # k limits the history; the most recent comes first
    assert context_text(hist, at, k=1) == "Wed 06:55 early morning. Last: Coffee Shop, 2 h ago."


def test_aware_timestamps_keep_their_local_wall_clock() -> None:
    ny = timezone(timedelta(hours=-5))
    at = datetime(2026, 1, 7, 6, 55, tzinfo=ny)  # 11:55 UTC, but 06:55 where the owner is
    prev = _ev(datetime(2026, 1, 7, 6, 40, tzinfo=ny), "Subway")
    assert context_text([prev], at).startswith("Wed 06:55 early morning. Last: Subway, 15 min ago.")


def test_events_to_examples_one_per_event_plus_lm_for_text() -> None:
    t0 = datetime(2026, 1, 5, 7, 0)
    events = [_ev(t0, "Gym"), _ev(t0 + timedelta(hours=1), "Coffee Shop", text="ran 5k, feeling good"),
              _ev(t0 + timedelta(hours=2), "Office", context={"mood": "calm"})]
    ex = events_to_examples(events, history=3)
    assert [(e.label, e.kind) for e in ex] == [("Gym", NEXT), ("Coffee Shop", NEXT), (None, LM), ("Office", NEXT)]
    assert ex[0].text == context_text([], t0, {})
    # the context of an example only uses earlier events, never the target itself
    assert "Office" not in ex[3].text.split("Last:")[1].split(".")[0] and "Coffee Shop, 1 h ago" in ex[3].text
    assert ex[3].text.endswith("mood: calm.")
    assert ex[2].text == ex[1].text + " Note: ran 5k, feeling good"
    assert label_space(events) == ["Coffee Shop", "Gym", "Office"]
