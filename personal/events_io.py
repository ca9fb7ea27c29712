"""Habit events from and to CSV or JSON Lines, with line-numbered errors.

Columns (CSV header or JSON keys): `user`, `timestamp`, `event` are required; `text` is the
optional free text; every other column is a context field (a `context.` prefix is stripped, and
in JSON Lines a `context` object is merged in). Timestamps are ISO 8601 (`2024-05-01T07:30:00`,
with or without an offset, `Z` allowed) or Unix seconds. Empty CSV cells are left out.

Validation is the vault's `Event` check (sizes, valid UTF-8, years 1970..2100 in UTC; a naive
timestamp counts as UTC, so a file may mix naive and offset times) plus what only a file has:
line length, JSON nesting depth, finite numbers. Bytes that are not UTF-8 fail their own line.
Every refusal names the line and never the value; a file with any refused line imports nothing,
unless `skip_bad`, which keeps every good line and reports every refused one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from personal.errors import EventsFileError, InvalidEvent, MalformedEvents
from personal.vault import FIRST_YEAR, LAST_YEAR, Event

REQUIRED = ("user", "timestamp", "event")
RESERVED = (*REQUIRED, "text")
FORMATS = ("csv", "jsonl")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
MAX_LINE_CHARS = 128 * 1024  # a JSON line or CSV record; the Event limits fit well inside
MAX_JSON_DEPTH = 16  # an event needs 2 (the object and its context)
_UNIX_RANGE = (datetime(FIRST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp(),
               datetime(LAST_YEAR + 1, 1, 1, tzinfo=timezone.utc).timestamp())


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
    """ISO 8601 text or Unix seconds → datetime (ValueError with a short reason, never the value)."""
    if isinstance(value, bool):
        raise ValueError("bad timestamp: a boolean")
    if isinstance(value, (int, float)):
        return _from_unix(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("missing timestamp")
    text = value.strip()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError("bad timestamp (want ISO 8601 or Unix seconds)") from None
    return _from_unix(seconds)


def _from_unix(seconds: float) -> datetime:
    try:
        finite = math.isfinite(seconds)
    except OverflowError:  # an int too large for a float: far out of range anyway
        finite, seconds = True, math.inf
    if not finite:
        raise ValueError("bad timestamp: not a finite number")
    if not _UNIX_RANGE[0] <= seconds < _UNIX_RANGE[1]:
        raise ValueError(f"timestamp out of range (want Unix seconds within years {FIRST_YEAR}..{LAST_YEAR}, not milliseconds)")
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON `text` nests arrays/objects deeper than `limit` (a linear scan: no recursion to blow up)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for token in _JSON_STRUCTURE.finditer(text):  # strings are skipped whole, at C speed
        ch = token.group()
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


# A string runs to its closing quote or to the end of the text (possessively), so a stray quote
# never makes the scan go back over the text: linear time on any input.
_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def chronological(events: Iterable[Event]) -> list[Event]:
    """Events in time order by the vault's rule (naive counts as UTC), so mixed files sort without a TypeError."""
    from personal.vault import order_key

    return sorted(events, key=lambda e: order_key(e.timestamp))


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
    # Minimal quoting does not quote a lone "\r" (not in the line terminator), which readers take as a line end.
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for ev in events:
        row = [ev.user, ev.timestamp.isoformat(), ev.event, ev.text or "", *(ev.context.get(k, "") for k in keys)]
        (quoted if any("\r" in cell for cell in row) else writer).writerow(row)
    return len(events)


def export_events(events: Iterable[Event], path: str | Path, fmt: str | None = None) -> int:
    """Write events to `path` ('-' for stdout) in the given or suffix-implied format.

    The file holds decrypted events: it is written owner-only (0600) from its first byte, into a
    fresh file that then replaces `path` (never through an existing file's looser mode or a link).
    """
    if str(path) == "-":
        return write_events(events, sys.stdout, fmt or "jsonl")
    kind = detect_format(path, fmt)
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # mode 0600
    except OSError as exc:
        raise EventsFileError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            n = write_events(events, fh, kind)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise EventsFileError(f"cannot write {target}: {exc.strerror}") from None
        raise
    return n


# ---------------------------------------------------------------------------- parsing
def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EventsFileError(f"events file {path} not found") from None
    except OSError as exc:
        raise EventsFileError(f"cannot read events file {path}: {exc.strerror}") from None
    # Undecodable bytes become lone surrogates, which the Event check refuses on their own line.
    return raw.decode("utf-8-sig", errors="surrogateescape")


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


def _not_utf8(values: Iterable[str]) -> bool:
    try:
        for value in values:
            value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _context_key(column: str) -> str:
    return column[len("context.") :] if column.startswith("context.") else column


def _parse_csv(text: str, source: str) -> tuple[list[Event], list[tuple[int, str]]]:
    # No field may trip the csv module's size limit: an error there loses the reader's place and
    # with it every later row. Sizes are checked per record below instead.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise EventsFileError(f"{source} is empty (want a header with {', '.join(REQUIRED)})") from None
    except csv.Error as exc:
        raise MalformedEvents(source, [(1, f"bad CSV header: {exc}")]) from None
    if _not_utf8(header):
        raise MalformedEvents(source, [(1, "header is not UTF-8 text")])
    missing = [c for c in REQUIRED if c not in header]
    if missing or len(set(header)) != len(header):
        why = f"header lacks {', '.join(missing)}" if missing else "header repeats a column"
        raise MalformedEvents(source, [(1, why)])
    idx = {name: i for i, name in enumerate(header)}
    extra = [(i, _context_key(h)) for i, h in enumerate(header) if h not in RESERVED]
    events: list[Event] = []
    problems: list[tuple[int, str]] = []
    while True:
        line = reader.line_num + 1  # where this record starts (it may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            why = f"bad CSV: {exc}"
        else:
            why = _csv_row_problem(row, header)
            if why == "":
                continue
            if why is None:
                try:
                    events.append(_csv_event(row, idx, extra))
                    continue
                except ValueError as exc:
                    why = str(exc)
        if reader.line_num > line:  # say how far a bad record reached: an unclosed quote swallows lines
            why += f" (this record spans lines {line}-{reader.line_num}: an unclosed quote?)"
        problems.append((line, why))
    return events, problems


def _csv_event(row: list[str], idx: dict[str, int], extra: list[tuple[int, str]]) -> Event:
    context = {key: row[i] for i, key in extra if row[i] != ""}
    text_cell = row[idx["text"]] if "text" in idx else None
    return _make_event(row[idx["user"]], row[idx["timestamp"]], row[idx["event"]], context, text_cell)


def _csv_row_problem(row: list[str], header: list[str]) -> str | None:
    """'' for a blank row (skipped silently), a reason for a bad one, None for one to parse."""
    if not row or all(not cell.strip() for cell in row):
        return ""
    if len(row) != len(header):
        return f"{len(row)} fields, header has {len(header)}"
    if sum(map(len, row)) > MAX_LINE_CHARS:
        return f"record longer than {MAX_LINE_CHARS:,} characters"
    if _not_utf8(row):
        return "not UTF-8 text"
    return None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _parse_jsonl(text: str, source: str) -> tuple[list[Event], list[tuple[int, str]]]:
    events: list[Event] = []
    problems: list[tuple[int, str]] = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = _json_line(raw)
            context = _json_context(obj)
            events.append(_make_event(obj.get("user"), obj.get("timestamp"), obj.get("event"), context, obj.get("text")))
        except ValueError as exc:
            problems.append((line, str(exc)))
    return events, problems


def _json_line(raw: str) -> dict:
    """One JSON Lines record as an object: bounded length and depth, finite numbers (ValueError otherwise)."""
    if len(raw) > MAX_LINE_CHARS:
        raise ValueError(f"line longer than {MAX_LINE_CHARS:,} characters")
    if _not_utf8([raw]):
        raise ValueError("not UTF-8 text")
    if json_too_deep(raw):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise ValueError(f"bad JSON: {str(exc).split(':')[0]}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


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
            raise ValueError(f"context field #{len(context) + 1} must be a string or number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"context field #{len(context) + 1} is not a finite number")
        context[key] = json.dumps(value) if isinstance(value, bool) else str(value)
    return context
