"""Sealing, key derivation and key wrapping for the vault.

A sealed value is `nonce (12 bytes) || AES-256-GCM ciphertext+tag`. The associated data is
`"{table}|{row}|{column}"`, so a ciphertext copied to another row or column fails to open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from personal.errors import IntegrityError

NONCE_BYTES = 12
KEY_BYTES = 32
SALT_BYTES = 16
OVERHEAD = NONCE_BYTES + 16  # nonce + GCM tag, per sealed value


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_BYTES)


def associated_data(table: str, row: object, column: str) -> bytes:
    """The bytes that bind a ciphertext to its place."""
    return f"{table}|{row}|{column}".encode()


@dataclass(frozen=True)
class KdfParams:
    """scrypt settings stored in clear in the vault (they are not secret)."""

    n: int
    r: int
    p: int
    salt: bytes

    def derive(self, passphrase: str | bytes) -> bytes:
        """The key-encryption key for `passphrase` (slow on purpose)."""
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        return Scrypt(salt=self.salt, length=KEY_BYTES, n=self.n, r=self.r, p=self.p).derive(secret)


def kek_check(kek: bytes) -> str:
    """A check value that tells a wrong passphrase apart from a damaged wrapped key."""
    return hmac.new(kek, b"homebody/v1/kek-check", hashlib.sha256).hexdigest()[:32]


def mac_subkey(data_key: bytes) -> bytes:
    """The HMAC key for lookup ids (kept apart from the encryption use of the data key)."""
    return hmac.new(data_key, b"homebody/v1/lookup", hashlib.sha256).digest()


def lookup_id(mac_key: bytes, *parts: str) -> str:
    """A keyed hash of `parts`: equality lookups without storing the clear value."""
    msg = b"\x1f".join(p.encode() for p in parts)
    return hmac.new(mac_key, msg, hashlib.sha256).hexdigest()


class Sealer:
    """Seal and open values under one key (one AESGCM object, reused)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, table: str, row: object, column: str) -> bytes:
        """Encrypt one value bound to (table, row, column)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data(table, row, column))

    def seal_many(self, plaintexts: Sequence[bytes], table: str, rows: Sequence[object], column: str) -> list[bytes]:
        """Encrypt a column of values at once (one urandom call for all nonces)."""
        pool = os.urandom(NONCE_BYTES * len(plaintexts))
        enc = self._aead.encrypt
        out = []
        for i, (pt, row) in enumerate(zip(plaintexts, rows)):
            nonce = pool[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
            out.append(nonce + enc(nonce, pt, f"{table}|{row}|{column}".encode()))
        return out

    def open_many(self, blobs: Sequence[bytes], table: str, rows: Sequence[object], column: str) -> list[bytes]:
        """Decrypt a column of values; the first failure raises `IntegrityError` naming its row."""
        dec = self._aead.decrypt
        out = []
        try:
            for blob, row in zip(blobs, rows):
                out.append(dec(blob[:NONCE_BYTES], blob[NONCE_BYTES:], f"{table}|{row}|{column}".encode()))
        except (InvalidTag, TypeError, ValueError):
            self.open(blobs[len(out)], table, rows[len(out)], column)  # raises with the precise reason
            raise IntegrityError(table, rows[len(out)], column) from None
        return out

    def open(self, blob: bytes | None, table: str, row: object, column: str) -> bytes:
        """Decrypt one value; any tampering raises `IntegrityError` naming the place."""
        if not isinstance(blob, (bytes, bytearray)) or len(blob) < OVERHEAD:
            raise IntegrityError(table, row, column, "missing or truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data(table, row, column))
        except InvalidTag:
            raise IntegrityError(table, row, column) from None
