"""Issue 13 item 5: decrypted exports are owner-only from their first byte; loose key files are refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from personal.vault import Vault
from tests.vault.conftest import FAST, PASS, make_events

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def vault(tmp_path: Path) -> str:
    path = tmp_path / "v.db"
    with Vault.create(path, PASS, FAST) as v:
        v.add_events(make_events(20))
    return str(path)


@pytest.fixture
def open_umask():
    """A permissive umask (as many desktop sessions have): the export must not depend on it."""
    before = os.umask(0o002)
    yield
    os.umask(before)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_export_is_created_owner_only(tmp_path, run_cli, vault, open_umask, suffix):
    out = tmp_path / f"out.{suffix}"
    code, stdout, err = run_cli("vault", "export", str(out), "--vault", vault)
    assert code == 0, err
    assert _mode(out) == 0o600 and out.read_text().count("\n") >= 20


def test_export_over_a_world_readable_file_leaves_it_owner_only(tmp_path, run_cli, vault, open_umask):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    out.chmod(0o644)
    code, stdout, err = run_cli("vault", "export", str(out), "--vault", vault)
    assert code == 0, err
    assert _mode(out) == 0o600 and "old" not in out.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no stray temporary file


def test_export_does_not_write_through_a_planted_link(tmp_path, run_cli, vault):
    """A link at the export path is replaced, never followed into a file others can read."""
    public = tmp_path / "public.jsonl"
    public.write_text("")
    public.chmod(0o644)
    out = tmp_path / "out.jsonl"
    out.symlink_to(public)
    code, stdout, err = run_cli("vault", "export", str(out), "--vault", vault)
    assert code == 0, err
    assert public.read_text() == "" and not out.is_symlink() and _mode(out) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_key_file_with_group_or_other_bits_is_refused(tmp_path, run_cli, vault, mode):
    key = tmp_path / "key"
    key.write_text(PASS + "\n")
    key.chmod(mode)
    code, stdout, err = run_cli("vault", "list", "--vault", vault, "--key-file", str(key), passphrase=None)
    assert code == 1 and err.strip().count("\n") == 0, err
    assert f"mode {mode:04o}" in err and "chmod 600" in err and PASS not in err


def test_owner_only_key_file_is_accepted(tmp_path, run_cli, vault):
    key = tmp_path / "key"
    key.write_text(PASS + "\n")
    key.chmod(0o600)
    code, stdout, err = run_cli("vault", "list", "--vault", vault, "--key-file", str(key), passphrase=None)
    assert code == 0 and "ann" in stdout, err
    key.chmod(0o400)
    assert run_cli("vault", "list", "--vault", vault, "--key-file", str(key), passphrase=None)[0] == 0


def test_loose_new_key_file_is_refused_and_the_passphrase_unchanged(tmp_path, run_cli, vault):
    new_key = tmp_path / "new-key"
    new_key.write_text("another long passphrase\n")
    new_key.chmod(0o644)
    code, stdout, err = run_cli("vault", "passphrase", "--new-key-file", str(new_key), "--vault", vault)
    assert code == 1 and "chmod 600" in err
    with Vault.open(vault, PASS) as v:  # the old passphrase still opens it
        assert v.count() == 20
