"""CSV / JSON Lines import and export: line-numbered errors, --skip-bad, round trips."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from personal.errors import EventsFileError, MalformedEvents
from personal.events_io import export_events, parse_timestamp, read_events
from tests.vault.conftest import make_events


def test_csv_parses_context_text_and_timestamp_forms(tmp_path):
    src = tmp_path / "e.csv"
    src.write_text(
        "\ufeffuser,timestamp,event,place,text,context.user\n"
        "ann,2024-01-01T07:00:00,wake,home,,x\n"
        'ann,2024-01-01T23:00:00Z,sleep,"home, bed","multi\nline",\n'
        "bob,1700000000,coffee,,,\n"
        "\n",
        encoding="utf-8",
    )
    events = read_events(src).events
    assert [e.event for e in events] == ["wake", "sleep", "coffee"]
    assert events[0].context == {"place": "home", "user": "x"} and events[0].text is None
    assert events[1].timestamp == datetime(2024, 1, 1, 23, tzinfo=timezone.utc)
    assert events[1].text == "multi\nline" and events[1].context == {"place": "home, bed"}
    assert events[2].timestamp == datetime.fromtimestamp(1700000000, tz=timezone.utc) and events[2].context == {}


def test_malformed_rows_are_reported_with_line_numbers(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(
        "user,timestamp,event\n"
        "ann,2024-01-01T07:00:00,wake\n"
        "ann,yesterday,sleep\n"  # line 3
        ",2024-01-01T07:00:00,wake\n"  # line 4
        "ann,2024-01-01T07:00:00\n"  # line 5
        "ann,2024-01-01T08:00:00,coffee\n"
    )
    with pytest.raises(MalformedEvents) as err:
        read_events(src)
    assert [line for line, _ in err.value.problems] == [3, 4, 5]
    assert "line 3: bad timestamp" in str(err.value) and "yesterday" not in str(err.value) and "\n" not in str(err.value)
    kept = read_events(src, skip_bad=True)
    assert [e.event for e in kept.events] == ["wake", "coffee"] and len(kept.skipped) == 3


def test_jsonl_errors_and_context(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_text(
        '{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "wake", "mood": 3, "context": {"place": "home"}}\n'
        "\n"
        "{not json\n"  # line 3
        '["a list"]\n'  # line 4
        '{"user": "ann", "timestamp": "2024-01-01T07:00:00"}\n'  # line 5: no event
        '{"user": "ann", "timestamp": 1700000000, "event": "run", "text": "5k", "gear": {"nested": 1}}\n'  # line 6
    )
    with pytest.raises(MalformedEvents) as err:
        read_events(src)
    assert [line for line, _ in err.value.problems] == [3, 4, 5, 6]
    good = read_events(src, skip_bad=True).events
    assert len(good) == 1 and good[0].context == {"mood": "3", "place": "home"}


def test_header_and_file_errors(tmp_path):
    src = tmp_path / "h.csv"
    src.write_text("user,when,event\nann,2024-01-01,x\n")
    with pytest.raises(MalformedEvents, match="line 1: header lacks timestamp"):
        read_events(src)
    with pytest.raises(EventsFileError, match="not found"):
        read_events(tmp_path / "missing.csv")
    with pytest.raises(EventsFileError, match="--format"):
        read_events(tmp_path / "events.txt")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"user,timestamp,event\nann,2024-01-01,caf\xe9\n")
    with pytest.raises(MalformedEvents, match="line 2: not UTF-8"):
        read_events(latin)
    with pytest.raises(ValueError):
        parse_timestamp("")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_export_then_import_round_trips(tmp_path, suffix):
    events = make_events(50)
    out = tmp_path / f"out.{suffix}"
    assert export_events(events, out) == 50
    assert read_events(out).events == events
