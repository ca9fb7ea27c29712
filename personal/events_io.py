"""Habit events from and to CSV or JSON Lines, with line-numbered errors.

Columns (CSV header or JSON keys): `user`, `timestamp`, `event` are required; `text` is the
optional free text; every other column is a context field (a `context.` prefix is stripped, and
in JSON Lines a `context` object is merged in). Timestamps are ISO 8601 (`2024-05-01T07:30:00`,
with or without an offset, `Z` allowed) or Unix seconds. Empty CSV cells are left out.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from personal.errors import EventsFileError, InvalidEvent, MalformedEvents
from personal.vault import Event

REQUIRED = ("user", "timestamp", "event")
RESERVED = (*REQUIRED, "text")
FORMATS = ("csv", "jsonl")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class ReadResult:
    """Events parsed from a file, and the rows that were skipped as (line, reason)."""

    events: list[Event]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """`fmt` if given, else the format implied by the file suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise EventsFileError(f"unknown events format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise EventsFileError(f"cannot tell the format of {path} from its suffix; pass --format csv|jsonl")
    return found


def parse_timestamp(value: object) -> datetime:
    """ISO 8601 text or Unix seconds → datetime (ValueError with a short reason otherwise)."""
    if isinstance(value, bool):
        raise ValueError(f"bad timestamp {value!r}")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("missing timestamp")
    text = value.strip()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"bad timestamp {text!r} (want ISO 8601 or Unix seconds)") from None


def read_events(path: str | Path, fmt: str | None = None, *, skip_bad: bool = False) -> ReadResult:
    """Parse an events file. Any malformed row raises `MalformedEvents` unless `skip_bad`."""
    path = Path(path)
    kind = detect_format(path, fmt)
    text = _read_text(path)
    events, problems = (_parse_csv if kind == "csv" else _parse_jsonl)(text, str(path))
    if problems and not skip_bad:
        raise MalformedEvents(str(path), problems)
    return ReadResult(events, problems)


def write_events(events: Iterable[Event], out: TextIO, fmt: str) -> int:
    """Write events to an open text stream as CSV or JSON Lines; returns how many."""
    detect_format("", fmt)
    events = list(events)
    if fmt == "jsonl":
        for ev in events:
            row: dict[str, object] = {"user": ev.user, "timestamp": ev.timestamp.isoformat(), "event": ev.event}
            if ev.text is not None:
                row["text"] = ev.text
            if ev.context:
                row["context"] = ev.context
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(events)
    keys = sorted({k for ev in events for k in ev.context})
    header = [*RESERVED, *(f"context.{k}" if k in RESERVED or k.startswith("context.") else k for k in keys)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for ev in events:
        writer.writerow(
            [ev.user, ev.timestamp.isoformat(), ev.event, ev.text or "", *(ev.context.get(k, "") for k in keys)]
        )
    return len(events)


def export_events(events: Iterable[Event], path: str | Path, fmt: str | None = None) -> int:
    """Write events to `path` ('-' for stdout) in the given or suffix-implied format."""
    if str(path) == "-":
        return write_events(events, sys.stdout, fmt or "jsonl")
    kind = detect_format(path, fmt)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        return write_events(events, fh, kind)


# ---------------------------------------------------------------------------- parsing
def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EventsFileError(f"events file {path} not found") from None
    except OSError as exc:
        raise EventsFileError(f"cannot read events file {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MalformedEvents(str(path), [(line, "not UTF-8 text")]) from None


def _make_event(user: object, ts: object, name: object, context: dict[str, str], text: object) -> Event:
    if not isinstance(user, str) or not user.strip():
        raise ValueError("missing user")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("missing event")
    if text is not None and not isinstance(text, str):
        raise ValueError("text must be a string")
    try:
        return Event(user.strip(), parse_timestamp(ts), name.strip(), context, text or None)
    except InvalidEvent as exc:
        raise ValueError(str(exc)) from None


def _context_key(column: str) -> str:
    return column[len("context.") :] if column.startswith("context.") else column


def _parse_csv(text: str, source: str) -> tuple[list[Event], list[tuple[int, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise EventsFileError(f"{source} is empty (want a header with {', '.join(REQUIRED)})") from None
    except csv.Error as exc:
        raise MalformedEvents(source, [(1, f"bad CSV header: {exc}")]) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing or len(set(header)) != len(header):
        why = f"header lacks {', '.join(missing)}" if missing else "header repeats a column"
        raise MalformedEvents(source, [(1, why)])
    idx = {name: i for i, name in enumerate(header)}
    extra = [(i, _context_key(h)) for i, h in enumerate(header) if h not in RESERVED]
    events: list[Event] = []
    problems: list[tuple[int, str]] = []
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append((reader.line_num, f"bad CSV: {exc}"))
            break
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append((line, f"{len(row)} fields, header has {len(header)}"))
            continue
        context = {key: row[i] for i, key in extra if row[i] != ""}
        text_cell = row[idx["text"]] if "text" in idx else None
        try:
            events.append(_make_event(row[idx["user"]], row[idx["timestamp"]], row[idx["event"]], context, text_cell))
        except ValueError as exc:
            problems.append((line, str(exc)))
    return events, problems


def _parse_jsonl(text: str, source: str) -> tuple[list[Event], list[tuple[int, str]]]:
    events: list[Event] = []
    problems: list[tuple[int, str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append((line, f"bad JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            problems.append((line, "not a JSON object"))
            continue
        try:
            context = _json_context(obj)
            events.append(_make_event(obj.get("user"), obj.get("timestamp"), obj.get("event"), context, obj.get("text")))
        except ValueError as exc:
            problems.append((line, str(exc)))
    return events, problems


def _json_context(obj: dict) -> dict[str, str]:
    nested = obj.get("context", {})
    if nested is None:
        nested = {}
    if not isinstance(nested, dict):
        raise ValueError("context must be an object")
    flat = {_context_key(k): v for k, v in obj.items() if k not in (*RESERVED, "context")}
    context: dict[str, str] = {}
    for key, value in {**flat, **nested}.items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise ValueError(f"context field {key!r} must be a string or number")
        context[key] = json.dumps(value) if isinstance(value, bool) else str(value)
    return context
