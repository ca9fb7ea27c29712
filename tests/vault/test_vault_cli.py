"""`homebody vault ...` through the console entry point, end to end (in-process and as a subprocess)."""

from __future__ import annotations

import json

from personal.events_io import read_events
from personal.vault import Vault
from tests.vault.conftest import FAST, PASS, cli, content_hash, make_events


def test_cli_walkthrough(tmp_path, run_cli):
    """Every vault command in-process through `main` (the subprocess path is covered by the acceptance tests)."""
    vault = str(tmp_path / "v.db")
    key_file = tmp_path / "key"
    key_file.write_text(PASS + "\n")
    key_file.chmod(0o600)  # key files must be owner-only
    code, out, err = run_cli("vault", "init", "--vault", vault, "--key-file", str(key_file), "--fast-kdf", passphrase=None)
    assert code == 0 and "FAST KDF" in out, err

    bad = tmp_path / "bad.csv"
    bad.write_text("user,timestamp,event,place\nann,2024-01-01T07:00:00,wake,home\nann,soon,sleep,home\nbob,2024-01-01T08:00:00,coffee,cafe\n")
    code, out, err = run_cli("vault", "import", str(bad), "--vault", vault)
    assert code == 1 and err.strip().count("\n") == 0 and "line 3: bad timestamp" in err and "soon" not in err
    with Vault.open(vault, PASS) as v:
        assert v.count() == 0  # nothing of the failed import was written
    code, out, err = run_cli("vault", "import", str(bad), "--skip-bad", "--vault", vault)
    assert code == 0 and "imported 2 events" in out and "skipped line 3" in err

    code, out, err = run_cli("vault", "add", "--user", "ann", "--event", "run", "--at", "2024-01-02T18:00:00", "--context", "km=5", "--text", "easy", "--vault", vault)
    assert code == 0, err
    code, out, err = run_cli("vault", "add", "--user", "ann", "--event", "run", "--context", "no-equals", "--vault", vault)
    assert code == 1 and "KEY=VALUE" in err

    code, out, err = run_cli("vault", "list", "--vault", vault)
    assert code == 0 and "ann" in out and "bob" in out
    code, out, err = run_cli("vault", "list", "--profile", "ann", "--vault", vault)
    assert code == 0 and "km=5" in out
    code, out, err = run_cli("vault", "list", "--profile", "zed", "--vault", vault)
    assert code == 1 and "no profile 'zed'" in err

    exported = tmp_path / "out.jsonl"
    assert run_cli("vault", "export", str(exported), "--vault", vault)[0] == 0
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [r["event"] for r in rows] == ["wake", "run", "coffee"] and rows[1]["context"] == {"km": "5"}
    with Vault.open(vault, PASS) as v:
        assert read_events(exported).events == v.events("ann") + v.events("bob")

    code, out, err = run_cli("vault", "forget", "bob", "--vault", vault)  # no terminal and no --yes: refuses
    assert code == 1 and "--yes" in err
    code, out, err = run_cli("vault", "forget", "bob", "--yes", "--vault", vault)
    assert code == 0 and "forgot bob" in out
    code, out, err = run_cli("vault", "verify", "--vault", vault)
    assert code == 0 and "ok: every sealed value opened" in out


def test_cli_passphrase_and_rotate_lose_nothing(tmp_path):
    vault = str(tmp_path / "v.db")
    with Vault.create(vault, PASS, FAST) as v:
        v.add_events(make_events(500, users=("ann", "bob", "cy")))
        before = (v.count(), content_hash(v))
    new_key = tmp_path / "new-key"
    new_key.write_text("a much longer new passphrase\n")
    new_key.chmod(0o600)
    out = cli("vault", "passphrase", "--new-key-file", str(new_key), "--vault", vault)
    assert out.returncode == 0, out.stderr
    out = cli("vault", "rotate", "--vault", vault, "--key-file", str(new_key), passphrase=None)
    assert out.returncode == 0 and "500 events" in out.stdout, out.stderr
    with Vault.open(vault, "a much longer new passphrase") as v:
        assert (v.count(), content_hash(v)) == before and v.verify().ok


def test_passphrase_is_never_a_command_line_option():
    import typer
    from typer.testing import CliRunner

    from personal import cli_vault

    app = typer.Typer()
    cli_vault.register(app)
    runner = CliRunner()
    for command in ("init", "import", "add", "list", "export", "forget", "passphrase", "rotate", "verify"):
        out = runner.invoke(app, ["vault", command, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, (command, out.output)
        assert "--key-file" in out.output and "--passphrase" not in out.output
