"""`homebody federate`: bad input is one typed HomebodyError (the root prints it as one line)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from privacy.errors import HomebodyError


def _federate(*args: str, monkeypatch) -> object:
    from simulations.cli import app

    monkeypatch.setenv("HOMEBODY_PASSPHRASE", "x" * 12)
    return CliRunner().invoke(app, ["federate", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["server", "--port", "9"], "--insecure"),
        (["device", "--vault", "/nonexistent/v.vault", "--profile", "me", "--insecure"], "vault not found"),
        (["run", "--encoding", "int4", "--insecure"], "encoding"),
        (["run", "--mode", "secagg", "--insecure"], "legacy API"),
        (["device", "--vault", "v", "--profile", "me", "--ca-cert", "/nonexistent/ca.pem"], "TLS file not found"),
    ],
)
def test_bad_options_are_one_clear_error(args, message, tmp_path, monkeypatch):
    result = _federate(*args, "--home", str(tmp_path), monkeypatch=monkeypatch)
    assert isinstance(result.exception, HomebodyError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_device_refuses_an_unknown_profile(tmp_path, monkeypatch):
    from personal.vault import Vault, VaultConfig

    path = tmp_path / "v.vault"
    Vault.create(path, "x" * 12, VaultConfig(fast_kdf=True)).close()
    result = _federate("device", "--vault", str(path), "--profile", "me", "--insecure", "--home", str(tmp_path), monkeypatch=monkeypatch)
    assert isinstance(result.exception, HomebodyError) and "profile 'me' not in" in str(result.exception)
