"""`homebody vault ...`: the encrypted personal store, from the command line (a thin layer over personal.vault)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from personal.cli_common import (
    NEW_PASSPHRASE_ENV,
    KeyFile,
    VaultPath,
    console,
    err_console,
    get_passphrase,
    open_vault,
    report_skipped_events,
    resolve_vault_path,
)
from personal.errors import VaultError

vault_app = typer.Typer(
    help="The encrypted vault of habit events (init, import, add, list, export, forget, ...).", no_args_is_help=True
)
Format = Annotated[Optional[str], typer.Option("--format", help="csv or jsonl (default: from the file suffix).")]


@vault_app.command("init")
def init(
    vault: VaultPath = None,
    key_file: KeyFile = None,
    fast_kdf: bool = typer.Option(False, "--fast-kdf", help="Cheap key derivation, for simulations only (recorded in the file)."),
) -> None:
    """Create a new, empty vault protected by a passphrase."""
    from personal.vault import Vault, VaultConfig

    path = resolve_vault_path(vault)
    passphrase = get_passphrase(key_file, confirm=True, prompt="New vault passphrase")
    with Vault.create(path, passphrase, VaultConfig(fast_kdf=fast_kdf)) as v:
        info = v.info()
        console.print(f"created vault [bold]{path}[/] ({info['kdf']}{', FAST KDF' if fast_kdf else ''})", soft_wrap=True)
        console.print(f"device public key: {v.public_key().public_bytes_raw().hex()}", soft_wrap=True, highlight=False)
    from personal.auth import ensure_token, token_path

    ensure_token(path)  # the local API's bearer token (`homebody serve`), owner-only
    console.print(f"API token: {token_path(path)} (owner-only)", soft_wrap=True, highlight=False)


@vault_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="CSV or JSON Lines file with columns user,timestamp,event (+ context, text)."),
    fmt: Format = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Keep the good rows and report the malformed ones."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Import events from a file in one transaction (all or nothing, unless --skip-bad)."""
    from personal.events_io import read_events

    with open_vault(vault, key_file) as v:
        with console.status(f"reading {file}..."):
            result = read_events(file, fmt, skip_bad=skip_bad)
        with console.status(f"sealing and storing {len(result.events):,} events..."):
            added = v.add_events(result.events)
    console.print(f"imported {added:,} events from {file}" + (f" ({len(result.skipped)} malformed rows skipped)" if result.skipped else ""))
    for line, why in result.skipped:  # every one: a silently dropped row is a lost event
        err_console.print(f"skipped line {line}: {why}", highlight=False, soft_wrap=True)


@vault_app.command("add")
def add(
    user: str = typer.Option(..., "--user", help="Profile (person) the event belongs to."),
    event: str = typer.Option(..., "--event", help="What happened, e.g. 'sleep' or 'coffee'."),
    at: Optional[str] = typer.Option(None, "--at", help="When (ISO 8601 or Unix seconds; default: now, local time)."),
    context: list[str] = typer.Option([], "--context", help="Context field KEY=VALUE (repeatable)."),
    text: Optional[str] = typer.Option(None, "--text", help="Optional free text."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Add one event."""
    from personal.events_io import parse_timestamp
    from personal.vault import Event

    fields = {}
    for item in context:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VaultError(f"--context wants KEY=VALUE, got {item!r}")
        fields[key] = value
    try:
        when = parse_timestamp(at) if at else datetime.now().astimezone()
    except ValueError as exc:
        raise VaultError(f"--at: {exc}") from None
    ev = Event(user, when, event, fields, text)
    with open_vault(vault, key_file) as v:
        v.add_events([ev])
    console.print(f"added 1 event for {user}")


@vault_app.command("list")
def list_(
    profile: Optional[str] = typer.Option(None, "--profile", help="Show this profile's latest events and artefacts."),
    limit: int = typer.Option(20, "--limit", min=0, help="How many of the latest events to show."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """List profiles (with counts), or one profile's latest events and its artefacts."""
    with open_vault(vault, key_file) as v, report_skipped_events():
        if profile is None:
            info = v.info()
            table = Table(title=f"{info['path']} — {info['events']:,} events, {info['kdf']}" + (" (FAST KDF)" if info["fast_kdf"] else ""))
            for col in ("profile", "events", "artefacts"):
                table.add_column(col)
            for name in v.profiles():
                table.add_row(name, f"{v.count(name):,}", str(len(v.list_artefacts(name))))
            console.print(table)
            return
        events = v.events(profile)
        artefacts = v.list_artefacts(profile)
    table = Table(title=f"{profile}: {len(events):,} events (latest {min(limit, len(events))})")
    for col in ("timestamp", "event", "context", "text"):
        table.add_column(col)
    for ev in events[-limit:] if limit else []:
        table.add_row(ev.timestamp.isoformat(), ev.event, ", ".join(f"{k}={val}" for k, val in ev.context.items()), ev.text or "")
    console.print(table)
    console.print("artefacts: " + (", ".join(f"{k}/{n}" for k, n in artefacts) or "none"))


@vault_app.command("export")
def export(
    out: Path = typer.Argument(..., help="Output file (.csv or .jsonl), or '-' for JSON Lines on stdout."),
    fmt: Format = None,
    profile: Optional[str] = typer.Option(None, "--profile", help="Only this profile (default: all)."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Decrypt events to CSV or JSON Lines (the same formats import reads)."""
    from personal.events_io import detect_format, export_events

    if str(out) != "-":
        detect_format(out, fmt)  # fail before decrypting anything
    with open_vault(vault, key_file) as v, report_skipped_events():
        names = [profile] if profile else v.profiles()
        events = [ev for name in names for ev in v.events(name)]
    n = export_events(events, str(out) if str(out) == "-" else out, fmt)
    if str(out) != "-":
        console.print(f"exported {n:,} events to {out} (decrypted: keep this file safe)")


@vault_app.command("forget")
def forget(
    profile: str = typer.Argument(..., help="Profile to erase."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Erase a profile: destroy its key, delete its events and artefacts, scrub the file."""
    with open_vault(vault, key_file) as v:
        if not v.has_profile(profile):
            from personal.errors import ProfileNotFound

            raise ProfileNotFound(f"no profile {profile!r} in {v.path}")
        if not yes:
            if not sys.stdin.isatty():
                raise VaultError("forget cannot be undone: pass --yes when not running on a terminal")
            typer.confirm(f"Erase profile {profile!r} ({v.count(profile):,} events) for good?", abort=True)
        n = v.count(profile)
        v.forget(profile)
    console.print(f"forgot {profile}: {n:,} events and its artefacts erased, its key destroyed")


@vault_app.command("passphrase")
def passphrase(
    vault: VaultPath = None,
    key_file: KeyFile = None,
    new_key_file: Optional[Path] = typer.Option(
        None, "--new-key-file", help=f"Read the new passphrase from this file (else ${NEW_PASSPHRASE_ENV}, else a prompt)."
    ),
) -> None:
    """Change the passphrase (rewraps the data key; nothing else is re-encrypted)."""
    with open_vault(vault, key_file) as v:
        new = get_passphrase(new_key_file, env=NEW_PASSPHRASE_ENV, confirm=True, prompt="New passphrase")
        v.change_passphrase(new)
    console.print(f"passphrase of {v.path} changed")


@vault_app.command("rotate")
def rotate(vault: VaultPath = None, key_file: KeyFile = None) -> None:
    """New data key and profile keys: re-encrypt every sealed value in one transaction."""
    with open_vault(vault, key_file) as v:
        with console.status("re-encrypting every sealed value..."):
            v.rotate_data_key()
        info = v.info()
    console.print(f"rotated the keys of {info['path']}: {info['events']:,} events, {info['artefacts']} artefacts re-encrypted")


@vault_app.command("verify")
def verify(vault: VaultPath = None, key_file: KeyFile = None, show: int = typer.Option(50, "--show", help="How many failures to list.")) -> None:
    """Open every sealed value; exit 1 and list the ones that fail."""
    with open_vault(vault, key_file) as v:
        with console.status("opening every sealed value..."):
            report = v.verify()
    console.print(
        f"{report.checked:,} sealed values checked: {report.profiles} profiles, {report.events:,} events, "
        f"{report.artefacts} artefacts; {report.kdf}" + (" (FAST KDF: simulations only)" if report.fast_kdf else ""),
        soft_wrap=True,
    )
    if report.sqlite_check != "ok":
        err_console.print(f"sqlite check: {report.sqlite_check}", highlight=False)
    for failure in report.failures[:show]:
        console.print(f"FAIL {failure}", highlight=False)
    if not report.ok:
        from personal.vault import StateMismatch

        state = sum(1 for f in report.failures if isinstance(f, StateMismatch))
        sealed = f"{len(report.failures) - state} sealed value(s) did not open"
        extra = f"; {state} problem(s) with rows or ledger records against the sealed state" if state else ""
        err_console.print(f"error: vault verification failed: {sealed}{extra}", highlight=False)
        raise typer.Exit(1)
    console.print("ok: every sealed value opened")


@contextmanager
def _unlock_for_privacy(path: Path, key_file: Optional[Path]) -> Iterator[tuple[object, object, list[str]]]:
    """What `homebody privacy budget --set-cap` and friends need from an unlocked vault."""
    with open_vault(path, key_file) as v:
        yield v.db, v.signing_key(), v.profiles()


def register(app: typer.Typer) -> None:
    from privacy import cli as privacy_cli

    privacy_cli.set_unlocker(_unlock_for_privacy)  # privacy/ (floor 1) cannot import the vault itself
    app.add_typer(vault_app, name="vault")
