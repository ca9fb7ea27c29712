"""Issue 13 item 4: one validation path for events, adversarial inputs through the CLI, the library and the SDK.

Each case is a file (or a call) an attacker or a careless user could hand over. What must hold:
a refusal names the line and no value, nothing of a refused file is imported, ``--skip-bad``
keeps every good line and reports every bad one, no input gets in that later crashes a reader,
and data that got in before validation existed neither crashes readers nor passes ``verify``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personal.errors import EventsFileError, InvalidEvent, MalformedEvents, StoredEventsSkipped
from personal.events_io import chronological, export_events, read_events
from personal.vault import Event, Vault
from tests.vault.conftest import FAST, PASS

SECRET = "SECRET-Mitte-Cafe"  # a personal value that must never appear in an error or a report
FAR_FUTURE = "9999-12-31T23:00:00-05:00"  # year 9999 locally, year 10000 in UTC: overflowed every reader


def _vault_with(tmp_path: Path, events: list[Event] | None = None) -> str:
    path = tmp_path / "v.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(events or [])
    return str(path)


def _good(i: int) -> str:
    return f"ann,2024-01-01T{i % 24:02d}:00:00,event{i},home"


# ------------------------------------------------------------------------------ timestamps
def test_far_future_timestamp_is_refused_at_import_and_nothing_is_imported(tmp_path, run_cli):
    vault = _vault_with(tmp_path)
    src = tmp_path / "e.csv"
    src.write_text(f"user,timestamp,event,place\n{_good(1)}\nann,{FAR_FUTURE},{SECRET},home\n{_good(2)}\n")
    code, out, err = run_cli("vault", "import", str(src), "--vault", vault)
    assert code == 1 and err.strip().count("\n") == 0, err
    assert "line 3: timestamp out of range" in err and SECRET not in err and "9999" not in err
    with Vault.open(vault, PASS) as v:
        assert v.count() == 0  # all or nothing
    # and the readers that used to overflow keep working
    assert run_cli("vault", "export", str(tmp_path / "out.jsonl"), "--vault", vault)[0] == 0
    assert run_cli("vault", "list", "--vault", vault)[0] == 0


@pytest.mark.parametrize("value", [FAR_FUTURE, "0001-01-01T00:00:00+05:00", "1969-12-31T23:59:59Z", "2101-01-01T00:00:00"])
def test_event_refuses_timestamps_outside_1970_2100_in_utc(value):
    with pytest.raises(InvalidEvent, match="timestamp out of range"):
        Event("ann", datetime.fromisoformat(value), "x")


def test_event_accepts_the_edges_of_the_range():
    Event("ann", datetime(1970, 1, 1), "x")
    Event("ann", datetime(2100, 12, 31, 23, 59, tzinfo=timezone.utc), "x")
    Event("ann", datetime(2100, 12, 31, 20, tzinfo=timezone(timedelta(hours=-3))), "x")  # 23:00 UTC


def test_stored_out_of_range_event_does_not_break_readers_and_verify_names_it(tmp_path, run_cli):
    """A vault written before validation existed: the bad row is skipped with a warning and `verify` fails on it."""
    bad = Event._trusted("ann", datetime.fromisoformat(FAR_FUTURE), SECRET, {}, None)  # bypasses the check, as old code did
    good = Event("ann", datetime(2024, 1, 1, 8), "coffee")
    path = tmp_path / "old.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events([good, bad, Event("ann", datetime(2024, 1, 2, 8), "tea")])
    with Vault.open(path, PASS) as v:
        with pytest.warns(StoredEventsSkipped, match=r"events rows 2\b"):
            assert [e.event for e in v.events("ann")] == ["coffee", "tea"]
        report = v.verify()
    assert not report.ok and [(f.table, f.row, f.column) for f in report.failures] == [("events", 2, "ts")]

    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli("vault", "export", str(out), "--vault", str(path))
    assert code == 0 and "warning:" in err and "events rows 2" in err and SECRET not in err, err
    assert [json.loads(line)["event"] for line in out.read_text().splitlines()] == ["coffee", "tea"]
    code, stdout, err = run_cli("vault", "list", "--profile", "ann", "--vault", str(path))
    assert code == 0 and "tea" in stdout and "warning:" in err
    code, stdout, err = run_cli("vault", "verify", "--vault", str(path))
    assert code == 1 and "table events, row 2, column ts" in stdout and "timestamp out of range" in stdout


def test_mixed_naive_and_offset_file_orders_like_the_vault(tmp_path):
    src = tmp_path / "mixed.csv"
    src.write_text("user,timestamp,event\nann,2024-01-01T09:00:00+02:00,b\nann,2024-01-01T06:30:00,a\n"
                   "ann,2024-01-01T08:00:00Z,c\n")
    events = read_events(src).events
    assert [e.event for e in chronological(events)] == ["a", "b", "c"]  # 06:30 (naive = UTC) < 07:00Z < 08:00Z
    with Vault.create(tmp_path / "v.db", PASS, FAST) as v:
        v.add_events(events)
        assert [e.event for e in v.events("ann")] == ["a", "b", "c"]


def test_simulate_on_a_file_mixing_naive_and_offset_timestamps(tmp_path, run_cli):
    lines = ["user,timestamp,event,place"]
    for user in ("ana", "ben"):
        for day in range(2, 6):
            for hour, event in ((7, "wake"), (13, "lunch"), (23, "sleep")):
                offset = "+01:00" if (day + hour) % 2 else ""
                lines.append(f"{user},2026-03-0{day}T{hour:02d}:00:00{offset},{event},home")
    src = tmp_path / "mixed.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sim"
    code, stdout, err = run_cli("simulate", "--dataset", f"events:{src}", "--model", "tiny", "--rounds", "1",
                                "--mode", "local", "--out", str(out), passphrase=None)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["population"]["devices"] == 2 and results["population"]["events"] == 24


# ------------------------------------------------------------------------------ --skip-bad
def test_skip_bad_keeps_every_good_row_after_an_oversized_field(tmp_path, run_cli):
    vault = _vault_with(tmp_path)
    big = "x" * 200_000  # over the csv module's default field limit (131,072), which lost the reader's place
    rows = [_good(1), f"ann,2024-01-01T01:00:00,b,{big}", *(_good(i) for i in range(2, 12))]
    src = tmp_path / "e.csv"
    src.write_text("user,timestamp,event,place\n" + "\n".join(rows) + "\n")
    code, out, err = run_cli("vault", "import", str(src), "--skip-bad", "--vault", vault)
    assert code == 0 and "imported 11 events" in out, (out, err)
    assert err.splitlines() == ["skipped line 3: record longer than 131,072 characters"]
    with Vault.open(vault, PASS) as v:
        assert sorted(e.event for e in v.events("ann")) == sorted(f"event{i}" for i in (1, *range(2, 12)))


def test_skip_bad_reports_every_skipped_line_without_values(tmp_path, run_cli):
    vault = _vault_with(tmp_path)
    bad_lines = list(range(3, 60, 2))  # 29 bad lines: more than the 20 that used to be shown
    rows = [f"ann,not-a-time-{SECRET},x,home" if n in bad_lines else _good(n) for n in range(2, 62)]
    src = tmp_path / "e.csv"
    src.write_text("user,timestamp,event,place\n" + "\n".join(rows) + "\n")
    code, out, err = run_cli("vault", "import", str(src), "--skip-bad", "--vault", vault)
    assert code == 0 and f"imported {60 - len(bad_lines)} events" in out
    reported = [int(line.split()[2].rstrip(":")) for line in err.splitlines()]
    assert reported == bad_lines and SECRET not in err


def test_unclosed_quote_is_reported_with_the_lines_it_swallowed(tmp_path):
    src = tmp_path / "e.csv"
    src.write_text('user,timestamp,event\nann,2024-01-01T07:00:00,wake\nann,2024-01-01T08:00:00,"coffee\n'
                   "ann,2024-01-01T09:00:00,work\nann,2024-01-01T10:00:00,gym\n")
    kept = read_events(src, skip_bad=True)
    assert [e.event for e in kept.events] == ["wake"]
    ((line, why),) = kept.skipped
    assert line == 3 and "spans lines 3-5" in why and "unclosed quote" in why


# ------------------------------------------------------------------------------ JSON Lines
GOOD_JSON = '{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "wake"}'
BAD_JSON_LINES = {
    "unix 1e20": ('{"user": "ann", "timestamp": 1e20, "event": "x"}', "timestamp out of range"),
    "unix in ms": ('{"user": "ann", "timestamp": 1700000000000, "event": "x"}', "milliseconds"),
    "huge int": ('{"user": "ann", "timestamp": ' + "9" * 400 + ', "event": "x"}', "timestamp out of range"),
    "1e400": ('{"user": "ann", "timestamp": 1e400, "event": "x"}', "not a finite number"),
    "bare Infinity": ('{"user": "ann", "timestamp": Infinity, "event": "x"}', "not a finite number"),
    "string Infinity": ('{"user": "ann", "timestamp": "Infinity", "event": "x"}', "not a finite number"),
    "NaN context": ('{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "x", "mood": NaN}', "not a finite number"),
    "deep nesting": ('{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "x", "context": {"k": '
                     + "[" * 50_000 + "]" * 50_000 + "}}", "nested deeper than"),
    "deeper than a line": ('{"c": ' + "[" * 100_000 + "]" * 100_000 + "}", "line longer than"),
    "lone surrogate": ('{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "caf\\ud800"}', "event is not valid UTF-8"),
    "surrogate key": ('{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "x", "context": {"k\\udfff": "v"}}',
                      "context field #1 name is not valid UTF-8"),
    "long text": ('{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "x", "text": "' + "t" * 10_001 + '"}',
                  "text longer than 10,000"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_LINES))
def test_bad_json_line_is_refused_by_line_and_nothing_imported(tmp_path, run_cli, case):
    vault = _vault_with(tmp_path)
    bad, reason = BAD_JSON_LINES[case]
    src = tmp_path / "e.jsonl"
    src.write_text(f"{GOOD_JSON}\n{bad}\n{GOOD_JSON}\n", encoding="utf-8")
    code, out, err = run_cli("vault", "import", str(src), "--vault", vault)
    assert code == 1 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert re.search(f"line 2: [^;]*{reason}", err), err
    with Vault.open(vault, PASS) as v:
        assert v.count() == 0
    code, out, err = run_cli("vault", "import", str(src), "--skip-bad", "--vault", vault)
    assert code == 0 and "imported 2 events" in out and err.startswith("skipped line 2:"), (out, err)


def test_undecodable_bytes_fail_only_their_own_line(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_bytes(GOOD_JSON.encode() + b'\n{"user": "ann", "timestamp": "2024-01-01T07:00:00", "event": "caf\xe9"}\n'
                    + GOOD_JSON.encode() + b"\n")
    with pytest.raises(MalformedEvents, match="line 2: not UTF-8 text"):
        read_events(src)
    assert len(read_events(src, skip_bad=True).events) == 2


# ------------------------------------------------------------------------------ the SDK
def test_sdk_record_refuses_bad_events_by_index_and_stores_nothing(tmp_path):
    from personal.assistant import Assistant

    with Assistant.create(tmp_path / "v.db", PASS, "ana", model="tiny", vault_config=FAST) as a:
        a.record({"event": "coffee", "timestamp": "2024-01-01T08:00:00"})
        cases = [
            ({"event": "x", "timestamp": FAR_FUTURE}, "timestamp out of range"),
            ({"event": "x", "timestamp": 1e20}, "timestamp out of range"),
            ({"event": "x", "timestamp": float("inf")}, "not a finite number"),
            ({"event": "x", "timestamp": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))}, "out of range"),
            ({"event": "caf\ud800"}, "event is not valid UTF-8"),
            ({"event": "x", "context": {"place": "\udc80"}}, "context field #1 value is not valid UTF-8"),
            ({"event": "x", "context": ["not", "a", "mapping"]}, "context must be a mapping"),
            ({"event": "x" * 201}, "event longer than 200"),
            ({"event": "x", "context": {f"k{i}": "v" for i in range(65)}}, "more than 64 fields"),
        ]
        for bad, reason in cases:
            with pytest.raises(InvalidEvent, match=f"event 1: .*{reason}") as err:
                a.record([{"event": "fine", "timestamp": "2024-01-01T09:00:00"}, bad])
            assert "\ud800" not in str(err.value) and "\udc80" not in str(err.value)
        assert a.count() == 1  # nothing of a refused batch was stored


# ------------------------------------------------------------------------------ property: never a crash
_EVENT_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_any_bytes_either_parse_or_raise_one_typed_error(tmp_path, data, suffix):
    src = tmp_path / f"fuzz{suffix}"
    src.write_bytes((b"user,timestamp,event\n" if suffix == ".csv" else b"") + data)
    try:
        result = read_events(src, skip_bad=True)
    except (MalformedEvents, EventsFileError):
        return
    for ev in result.events:
        assert ev.problem() is None  # whatever got through is a valid event


_ANY_TEXT = st.text(max_size=12)  # lone surrogates included
_JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _ANY_TEXT,
                        st.sampled_from(["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+14:00", "2024-01-01T07:00:00",
                                         "Infinity", "-1e308", "nan"]))
_JSON_EVENT = st.fixed_dictionaries({"user": _JSON_VALUE, "timestamp": _JSON_VALUE, "event": _JSON_VALUE},
                                    optional={"text": _JSON_VALUE, "context": st.dictionaries(_ANY_TEXT, _JSON_VALUE, max_size=3),
                                              "place": _JSON_VALUE})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_JSON_EVENT, min_size=1, max_size=5))
def test_any_json_event_is_stored_and_read_back_or_refused_by_line(tmp_path, rows):
    """JSON with NaN/Infinity, huge numbers, surrogates, far-off times: a typed refusal, or events every reader can use."""
    src = tmp_path / "fuzz.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")  # json.dumps escapes surrogates
    try:
        events = read_events(src).events
    except MalformedEvents as exc:
        assert {line for line, _ in exc.problems} <= set(range(1, len(rows) + 1))
        return
    path = tmp_path / "v.db"
    path.unlink(missing_ok=True)
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(events)
        for user in v.profiles():
            export_events(v.events(user), tmp_path / "out.jsonl")


_CONTEXT = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), _EVENT_TEXT, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_EVENT_TEXT, st.integers(0, 4_102_444_799), _EVENT_TEXT, st.booleans(), _CONTEXT,
                               st.none() | _EVENT_TEXT), min_size=1, max_size=8),
       fmt=st.sampled_from(["csv", "jsonl"]))
def test_valid_events_round_trip_through_export_and_import(tmp_path, rows, fmt):
    """Whatever the check admits, export writes and import reads back unchanged (CSV quoting of a lone CR included)."""
    events = []
    for user, seconds, name, aware, context, text in rows:
        when = datetime.fromtimestamp(seconds, tz=timezone.utc)
        events.append(Event(user.strip(), when if aware else when.replace(tzinfo=None), name.strip(), context, text))
    out = tmp_path / f"out.{fmt}"
    export_events(events, out)
    assert read_events(out).events == events
