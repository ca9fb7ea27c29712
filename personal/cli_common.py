"""Helpers shared by the personal/ CLI modules: the vault path, the passphrase, opening a vault.

The passphrase never comes from the command line. Sources, first found wins:
`--key-file FILE` (its first line), `$HOMEBODY_PASSPHRASE`, then a hidden prompt on a terminal.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from personal.errors import KeyFileUnsafe, NotAVault, PassphraseMissing, StoredEventsSkipped

if TYPE_CHECKING:
    from personal.vault import Vault

PASSPHRASE_ENV = "HOMEBODY_PASSPHRASE"
NEW_PASSPHRASE_ENV = "HOMEBODY_NEW_PASSPHRASE"
VAULT_ENV = "HOMEBODY_VAULT"

console = Console()
err_console = Console(stderr=True)


def default_vault_path() -> Path:
    """$HOMEBODY_VAULT, else ~/.homebody/vault.db."""
    return Path(os.environ.get(VAULT_ENV) or Path.home() / ".homebody" / "vault.db")


VaultPath = Annotated[
    Optional[Path],
    typer.Option("--vault", help="Vault file (default: $HOMEBODY_VAULT or ~/.homebody/vault.db).", show_default=False),
]
KeyFile = Annotated[
    Optional[Path],
    typer.Option("--key-file", help="Read the passphrase from this file's first line (else $HOMEBODY_PASSPHRASE, else a prompt)."),
]


def resolve_vault_path(path: Optional[Path]) -> Path:
    """The vault path from the option, the environment or the default."""
    return (path or default_vault_path()).expanduser()


def read_key_file(path: Path) -> str:
    """The passphrase stored in a key file (first line, without its line ending).

    Like ssh with a private key, a file that its group or others may read or write is refused:
    the passphrase in it opens every sealed value of the vault.
    """
    try:
        with open(path.expanduser(), "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode  # the file actually opened, not a name that may change
            if os.name == "posix" and mode & 0o077:
                raise KeyFileUnsafe(
                    f"key file {path} has mode {stat.S_IMODE(mode):04o}: others than you may read it; "
                    f"run `chmod 600 {path}` (a key file must be owner-only)"
                )
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise PassphraseMissing(f"key file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PassphraseMissing(f"cannot read key file {path}: {exc}") from None
    first = text.splitlines()[0] if text else ""
    if not first:
        raise PassphraseMissing(f"key file {path} is empty")
    return first


def get_passphrase(
    key_file: Optional[Path] = None, *, env: str = PASSPHRASE_ENV, confirm: bool = False, prompt: str = "Vault passphrase"
) -> str:
    """The passphrase from `key_file`, the environment variable `env`, or a hidden prompt."""
    if key_file is not None:
        return read_key_file(key_file)
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise PassphraseMissing(f"no passphrase: use --key-file FILE or set {env} (no terminal to prompt on)")
    value = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    if not value:
        raise PassphraseMissing("the passphrase must not be empty")
    return value


def open_vault(path: Optional[Path], key_file: Optional[Path] = None) -> "Vault":
    """Open the vault at `path` (or the default) with the passphrase from `key_file`/env/prompt."""
    from personal.vault import Vault  # sqlite_utils pulls in pandas: keep `homebody --help` fast

    resolved = resolve_vault_path(path)
    if not resolved.is_file():
        raise NotAVault(f"no vault at {resolved}; create one with `homebody vault init --vault {resolved}`")
    return Vault.open(resolved, get_passphrase(key_file))


@contextmanager
def report_skipped_events() -> Iterator[None]:
    """Show the vault's warnings about unusable stored events as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoredEventsSkipped)
        yield
    for w in caught:
        if issubclass(w.category, StoredEventsSkipped):
            err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
