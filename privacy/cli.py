"""`homebody privacy ...` (accounting, budgets) and `homebody audit ...` (verify, receipt, report).

Reading and verifying work on the vault file with sqlite alone: the ledger is signed, names
profiles by id (a keyed hash) and the device public key is in ``meta``, so no passphrase is
needed; read-only commands open the file read-only. Changing a budget policy, and naming a
profile by its name, need the device key: those unlock the vault through the hook the personal
floor installs (:func:`set_unlocker`), since this floor imports nothing of ours.
(`homebody audit empirical` is registered by simulations/empirical_audit.py.)
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from privacy.errors import HomebodyError

privacy_app = typer.Typer(help="Privacy accounting: epsilon of a mechanism, noise for a target, budgets.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit privacy: verify the signed ledger, report budgets, run an empirical audit.", no_args_is_help=True)
console = Console()

ACCOUNTANT_HELP = "pld (dp-accounting, default), prv (opacus) or rdp (opacus)."
VAULT_HELP = "The vault file (its ledger is read with sqlite alone: no passphrase)."


KEY_FILE_HELP = "Read the vault passphrase from this file (else $HOMEBODY_PASSPHRASE, else a prompt)."

# (vault path, key file) -> a context giving (db, device signing key, the owner's profile names).
Unlocker = Callable[[Path, Optional[Path]], AbstractContextManager[tuple[Any, Any, list[str]]]]
_unlocker: Unlocker | None = None


class VaultFileError(HomebodyError):
    """The vault file is missing or is not an SQLite file."""


class UnlockUnavailable(HomebodyError):
    """A command needs the vault unlocked but no unlocker is installed."""


def set_unlocker(fn: Unlocker) -> None:
    """Install how to unlock a vault (the personal floor does it when it registers its CLI)."""
    global _unlocker
    _unlocker = fn


@contextmanager
def unlocked(vault: Path, key_file: Optional[Path]):
    """(db, signer, profile names) of the unlocked vault, for the duration of the block."""
    if _unlocker is None:
        raise UnlockUnavailable("this command needs the vault's passphrase, but no vault support is installed")
    if not vault.is_file():
        raise VaultFileError(f"no vault at {vault}")
    with _unlocker(vault, key_file) as parts:
        yield parts


def _needs_unlock(profile: Optional[str]) -> bool:
    from privacy.ledger import is_profile_id

    return profile is not None and not is_profile_id(profile)


def open_db(path: Path, readonly: bool = True):
    """Open the vault's SQLite file with sqlite-utils (read-only unless asked)."""
    import sqlite_utils

    if not path.is_file():
        raise VaultFileError(f"no vault at {path}")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) if readonly else sqlite3.connect(str(path))
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise VaultFileError(f"{path} is not a vault (SQLite: {exc})") from None
    return sqlite_utils.Database(conn)


def _eps_json(x: float) -> float | None:
    return None if math.isinf(x) else x


def _emit(as_json: bool, payload: dict, text: str) -> None:
    if as_json:
        print(json.dumps(payload))
    else:
        console.print(text, highlight=False)


@privacy_app.command("epsilon")
def epsilon_cmd(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", "-z", help="Gaussian noise multiplier (0 = no noise)."),
    sample_rate: float = typer.Option(..., "--sample-rate", "-q", help="Poisson sampling probability per step."),
    steps: int = typer.Option(..., "--steps", "-t", help="Number of steps (or rounds)."),
    delta: float = typer.Option(1e-5, "--delta", "-d", help="Target delta."),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Epsilon of a Poisson-subsampled Gaussian mechanism (one DP-SGD run)."""
    from privacy.accountant import SubsampledGaussian, compute_epsilon

    mech = SubsampledGaussian(noise_multiplier, sample_rate, steps)
    eps = compute_epsilon([mech], delta, accountant)
    payload = {"epsilon": _eps_json(eps), "delta": delta, "accountant": accountant.lower(), **mech.params()}
    _emit(as_json, payload, f"epsilon = {eps:.6g} at delta = {delta:g} ({accountant.lower()}; z={noise_multiplier:g}, "
          f"q={sample_rate:g}, {steps} steps)")


@privacy_app.command("noise")
def noise_cmd(
    epsilon: float = typer.Option(..., "--epsilon", "-e", help="Target epsilon."),
    sample_rate: float = typer.Option(..., "--sample-rate", "-q", help="Poisson sampling probability per step."),
    steps: int = typer.Option(..., "--steps", "-t", help="Number of steps (or rounds)."),
    delta: float = typer.Option(1e-5, "--delta", "-d", help="Target delta."),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The smallest noise multiplier that keeps the run within (epsilon, delta)."""
    from privacy.accountant import SubsampledGaussian, compute_epsilon, noise_for_epsilon

    z = noise_for_epsilon(epsilon, sample_rate, steps, delta, accountant)
    achieved = compute_epsilon([SubsampledGaussian(z, sample_rate, steps)], delta, accountant)
    payload = {"noise_multiplier": z, "epsilon": achieved, "target_epsilon": epsilon, "delta": delta,
               "accountant": accountant.lower(), "sample_rate": sample_rate, "steps": steps}
    _emit(as_json, payload, f"noise multiplier = {z:.4f} (epsilon = {achieved:.4g} <= {epsilon:g} at delta = {delta:g}, "
          f"{accountant.lower()})")


@privacy_app.command("steps")
def steps_cmd(
    epsilon: float = typer.Option(..., "--epsilon", "-e", help="Target epsilon."),
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", "-z", help="Gaussian noise multiplier."),
    sample_rate: float = typer.Option(..., "--sample-rate", "-q", help="Poisson sampling probability per step."),
    delta: float = typer.Option(1e-5, "--delta", "-d", help="Target delta."),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The largest number of steps that keeps the run within (epsilon, delta)."""
    from privacy.accountant import max_steps_for_epsilon

    t = max_steps_for_epsilon(epsilon, noise_multiplier, sample_rate, delta, accountant)
    payload = {"steps": t, "epsilon": epsilon, "delta": delta, "accountant": accountant.lower(),
               "noise_multiplier": noise_multiplier, "sample_rate": sample_rate}
    _emit(as_json, payload, f"at most {t} steps keep epsilon <= {epsilon:g} at delta = {delta:g} ({accountant.lower()})")


def _budget_rows(db, profiles: list[str], accountant: str, signer=None, names: dict[str, str] | None = None) -> list[dict]:
    from privacy.budget import ReleaseGate

    gate = ReleaseGate(db, signer=signer, accountant=accountant)
    names = names or {}
    rows = []
    for p in profiles:
        pid = gate.ledger.profile_key(p)
        for s in gate.status(p):
            rows.append({"profile": names.get(pid, p), "profile_id": pid, "unit": s.unit, "spent": _eps_json(s.spent),
                         "cap": s.cap, "remaining": s.remaining, "delta": s.delta,
                         "window_days": s.window_days, "window_cap": s.window_cap})
    return rows


@privacy_app.command("budget")
def budget_cmd(
    vault: Path = typer.Option(..., "--vault", help=VAULT_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="One profile: its name (needs the passphrase) or "
                                          "its id pid-... (default: all in the ledger)."),
    unit: Optional[str] = typer.Option(None, "--unit", help="With --set-cap: record or user (default: both)."),
    set_cap: Optional[float] = typer.Option(None, "--set-cap", help="Set this epsilon cap for --profile."),
    delta: float = typer.Option(1e-5, "--delta", help="With --set-cap: the policy's delta."),
    window_days: Optional[float] = typer.Option(None, "--window-days", help="With --set-cap: rolling window length."),
    window_cap: Optional[float] = typer.Option(None, "--window-cap", help="With --set-cap: epsilon cap per window."),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    names: bool = typer.Option(False, "--names", help="Unlock the vault (passphrase) to show profile names, not ids."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=KEY_FILE_HELP),
) -> None:
    """Show spent and remaining budget per profile and unit; set a profile's policy with --set-cap.

    Setting a cap is a signed ledger entry: it needs the vault's passphrase (the device key).
    """
    from privacy.budget import BudgetError, BudgetPolicy, ReleaseGate
    from privacy.ledger import UNITS, Ledger

    policy = None
    if set_cap is not None:
        if profile is None:
            raise BudgetError("--set-cap needs --profile")
        policy = BudgetPolicy(set_cap, delta, window_days, window_cap)
        if unit is not None and unit not in UNITS:
            raise BudgetError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if policy is not None or names or _needs_unlock(profile):
        with unlocked(vault, key_file) as (db, signer, owner_names):
            if policy is not None:
                gate = ReleaseGate(db, signer=signer, accountant=accountant)
                for u in [unit] if unit else list(UNITS):
                    gate.set_policy(profile, u, policy)
            ids = Ledger(db, signer=signer).names(owner_names)
            rows = _budget_rows(db, [profile] if profile else Ledger(db).profiles(), accountant, signer, ids)
    else:
        db = open_db(vault)
        rows = _budget_rows(db, [profile] if profile else Ledger(db).profiles(), accountant)
    if as_json:
        print(json.dumps({"accountant": accountant, "budgets": rows}))
        return
    table = Table("profile", "unit", "spent ε", "cap ε", "remaining ε", "δ", title=f"privacy budgets ({accountant})")
    for r in rows:
        spent = "∞" if r["spent"] is None else f"{r['spent']:.4g}"
        table.add_row(r["profile"], r["unit"], spent, f"{r['cap']:g}", f"{r['remaining']:.4g}", f"{r['delta']:g}")
    console.print(table if rows else "no releases recorded")


@privacy_app.command("check")
def check_cmd(
    vault: Path = typer.Option(..., "--vault", help=VAULT_HELP),
    profile: str = typer.Option(..., "--profile", "-p", help="The profile that would release: its name (needs the "
                                "passphrase) or its id pid-..."),
    unit: str = typer.Option("record", "--unit", help="record (local DP-SGD) or user (federated rounds)."),
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", "-z"),
    sample_rate: float = typer.Option(..., "--sample-rate", "-q"),
    steps: int = typer.Option(..., "--steps", "-t"),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=KEY_FILE_HELP),
) -> None:
    """Would this release fit the budget? Reads only; exits 1 with what remains when it would not."""
    from privacy.accountant import SubsampledGaussian
    from privacy.budget import ReleaseGate

    mech = SubsampledGaussian(noise_multiplier, sample_rate, steps)
    if _needs_unlock(profile):
        with unlocked(vault, key_file) as (db, signer, _):
            gate = ReleaseGate(db, signer=signer, accountant=accountant)
            after, cap = gate.check(profile, unit, mech), gate.policy(profile, unit).epsilon_cap
    else:
        gate = ReleaseGate(open_db(vault), accountant=accountant)
        after, cap = gate.check(profile, unit, mech), gate.policy(profile, unit).epsilon_cap
    console.print(f"fits: epsilon would be {after:.4g} of cap {cap:g} ({unit}-level), "
                  f"{cap - after:.4g} would remain", highlight=False)


@audit_app.command("verify")
def verify_cmd(
    vault: Path = typer.Option(..., "--vault", help=VAULT_HELP),
    public_key: Optional[str] = typer.Option(None, "--public-key", help="Hex of the device public key (default: the file's meta)."),
    receipt: Optional[Path] = typer.Option(None, "--receipt", help="Also check that the file extends this receipt "
                                           "(from `homebody audit receipt`): detects a rollback to an older copy."),
) -> None:
    """Check every ledger record's signature, the hash chain and the signed head; name each problem."""
    from privacy.ledger import POLICY, Ledger, LedgerTampered

    ledger = Ledger(open_db(vault))
    problems = ledger.verify(public_key)
    if receipt is not None:
        problems += ledger.check_receipt(_read_receipt(receipt), public_key)
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}", highlight=False)
        raise LedgerTampered(problems)
    entries = ledger.records(kind=None)
    n, n_pol = len(entries), sum(1 for r in entries if r.kind == POLICY)
    against = f"; it extends the receipt {receipt}" if receipt is not None else ""
    console.print(f"[green]✓[/] ledger verified: {n} record{'s' if n != 1 else ''} ({n - n_pol} releases, {n_pol} policy "
                  f"changes), each signed by the device key and chained to its predecessor up to the signed head{against}",
                  highlight=False)


def _read_receipt(path: Path) -> dict:
    from privacy.ledger import LedgerError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerError(f"cannot read receipt {path}: {exc}") from None


@audit_app.command("receipt")
def receipt_cmd(
    vault: Path = typer.Option(..., "--vault", help=VAULT_HELP),
    out: Path = typer.Option(..., "--out", help="Write the signed receipt (JSON) here; keep it off the device."),
) -> None:
    """Export a signed receipt of the ledger's current head, to detect a later rollback of the whole file."""
    from privacy.ledger import Ledger

    rec = Ledger(open_db(vault)).receipt()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    console.print(f"receipt written to {out}: ledger head seq {rec['seq']} ({rec['sha256'][:16]}…), signed by the device "
                  "key; check a later copy with `homebody audit verify --receipt`", highlight=False)


@audit_app.command("report")
def report_cmd(
    vault: Path = typer.Option(..., "--vault", help=VAULT_HELP),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="One profile (default: all)."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    accountant: str = typer.Option("pld", "--accountant", "-a", help=ACCOUNTANT_HELP),
    names: bool = typer.Option(False, "--names", help="Unlock the vault (passphrase) to show profile names, not ids."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=KEY_FILE_HELP),
) -> None:
    """Releases, spent and remaining budget per unit, and (HTML) a plot of epsilon over time."""
    from privacy.report import write_ledger_report

    if names or _needs_unlock(profile):
        with unlocked(vault, key_file) as (db, signer, owner_names):
            rep = write_ledger_report(db, profile, html_path, json_path, accountant, signer=signer, names=owner_names)
    else:
        rep = write_ledger_report(open_db(vault), profile, html_path, json_path, accountant)
    table = Table("profile", "unit", "releases", "spent ε", "cap ε", "remaining ε", title="privacy budgets")
    for b in rep["budgets"]:
        spent = "∞" if b["spent"] == "inf" else f"{b['spent']:.4g}"
        table.add_row(b["profile"], b["unit"], str(b["releases"]), spent, f"{b['cap']:g}", f"{b['remaining']:.4g}")
    console.print(table if rep["budgets"] else "no releases recorded")
    console.print("[green]ledger verified[/]" if rep["verified"] else f"[red]ledger problems:[/] {'; '.join(rep['problems'])}",
                  highlight=False)
    for label, path in (("HTML", html_path), ("JSON", json_path)):
        if path is not None:
            console.print(f"{label} report: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `privacy` and `audit` groups to the root app."""
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(audit_app, name="audit")
