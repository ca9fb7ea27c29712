"""The local API's bearer token: created with the vault, stored beside it, readable by the owner only.

The token file is ``<vault>.token`` (one line, 43 URL-safe characters = 256 random bits),
created with mode 0600 from its first byte (``O_CREAT | O_EXCL``), so no other local user can
read it. ``homebody vault init`` creates it; ``homebody serve`` creates it for a vault made
before tokens existed. A token file that others can read or write is refused rather than used.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from privacy.errors import HomebodyError

TOKEN_SUFFIX = ".token"


class TokenError(HomebodyError):
    """The token file is missing, unreadable, malformed or readable by other users."""


def token_path(vault_path: str | os.PathLike) -> Path:
    """Where the token of the vault at ``vault_path`` lives (``<vault>.token``)."""
    vault_path = Path(vault_path)
    return vault_path.with_name(vault_path.name + TOKEN_SUFFIX)


def create_token(vault_path: str | os.PathLike) -> str:
    """Create a fresh token file (owner-only, refuses to overwrite) and return the token."""
    path = token_path(vault_path)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise TokenError(f"{path} already exists; read it with read_token or delete it to make a new one") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token


def read_token(vault_path: str | os.PathLike) -> str:
    """The stored token; refuses a file that group or others may read or write."""
    path = token_path(vault_path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TokenError(f"no API token at {path}; `homebody serve` creates one") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"{path} is accessible to other users (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if len(token) < 32 or not all(c.isalnum() or c in "-_" for c in token):
        raise TokenError(f"{path} does not hold a valid token; delete it and run `homebody serve` to make a new one")
    return token


def ensure_token(vault_path: str | os.PathLike) -> tuple[str, bool]:
    """The vault's token, creating it if there is none yet; returns (token, created)."""
    if token_path(vault_path).exists():
        return read_token(vault_path), False
    try:
        return create_token(vault_path), True
    except TokenError:  # another process created it meanwhile
        return read_token(vault_path), False


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <expected>`` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())
