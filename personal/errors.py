"""The personal floor's typed errors: each one is a single clear line for the user.

All derive from `privacy.errors.HomebodyError`, so the CLI root prints them as one line on
stderr and exits non-zero.
"""

from __future__ import annotations

from privacy.errors import HomebodyError


class VaultError(HomebodyError):
    """Base of every vault failure."""


class WrongPassphrase(VaultError):
    """The passphrase (or key file) does not open this vault."""


class NotAVault(VaultError):
    """The path is missing, is not SQLite, or is not a homebody vault."""


class VaultCorrupted(VaultError):
    """The vault's own settings (meta table, wrapped keys) are damaged."""


class VaultExists(VaultError):
    """`Vault.create` was asked to overwrite an existing file."""


class VaultChanged(VaultError):
    """Another process changed the vault's keys (passphrase change) while this one held it open."""


class IntegrityError(VaultError):
    """A sealed value failed to open: it was tampered with, moved, or damaged.

    `table`, `row` and `column` name the value exactly.
    """

    def __init__(self, table: str, row: object, column: str, detail: str = "tampered, moved or damaged") -> None:
        self.table, self.row, self.column = table, row, column
        super().__init__(f"sealed value failed to open: table {table}, row {row}, column {column} ({detail})")


class MalformedEvents(VaultError):
    """An events file has malformed rows; `problems` lists (line number, reason)."""

    def __init__(self, source: str, problems: list[tuple[int, str]], shown: int = 5) -> None:
        self.source, self.problems = source, list(problems)
        head = "; ".join(f"line {line}: {why}" for line, why in self.problems[:shown])
        more = f"; and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        super().__init__(
            f"{source}: {len(self.problems)} malformed row(s), nothing imported "
            f"(use --skip-bad to keep the good rows): {head}{more}"
        )


class InvalidEvent(VaultError, ValueError):
    """An `Event` was built with a missing or wrongly typed field."""


class ProfileNotFound(VaultError):
    """No profile of that name is stored in the vault."""


class ArtefactNotFound(VaultError):
    """No artefact of that profile, kind and name is stored in the vault."""


class PassphraseMissing(VaultError):
    """No passphrase source was available (prompt, HOMEBODY_PASSPHRASE or --key-file)."""


class InvalidArtefact(VaultError, ValueError):
    """An artefact was given with data that is not bytes or meta that is not JSON-serialisable."""


class EventsFileError(VaultError):
    """An events file cannot be read at all (missing, unknown format, empty, not writable)."""


class KeyFileUnsafe(PassphraseMissing):
    """A --key-file that others than its owner may read or write (refused, as ssh refuses such keys)."""


class ArtefactMismatch(VaultError):
    """A stored adapter is not the one the ledger says was released (swapped in, or stored outside the release path)."""


class StoredEventsSkipped(UserWarning):
    """Events stored before input validation whose timestamp is unusable: readers skip them (`vault verify` lists them)."""

    def __init__(self, profile: str, rows: list[int]) -> None:
        self.profile, self.rows = profile, list(rows)
        shown = ", ".join(map(str, self.rows[:10])) + (" ..." if len(self.rows) > 10 else "")
        super().__init__(
            f"skipped {len(self.rows)} stored event(s) of profile {profile!r} with a timestamp outside "
            f"the supported range (events rows {shown}); `homebody vault verify` lists them"
        )
