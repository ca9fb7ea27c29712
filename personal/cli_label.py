"""`homebody label ...`: check a generated text's manifest, and test it for the watermark.

Thin layer over `personal.provenance`; torch/transformers are imported only by `detect`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from personal.cli_common import KeyFile, VaultPath
from personal.provenance.errors import ManifestError, WatermarkError

label_app = typer.Typer(help="AI-generated output labels: verify a signed manifest, detect the watermark.", no_args_is_help=True)

KEY_ENV = "HOMEBODY_WATERMARK_KEY"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason})") from exc


@label_app.command("verify")
def verify(
    file: Path = typer.Argument(..., help="The labelled text file."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="Manifest JSON (default: FILE.manifest.json)."),
    public_key: Optional[list[str]] = typer.Option(
        None, "--public-key", help="A signer key to trust (hex or base64; repeatable). See `homebody label key`."
    ),
    vault: Optional[Path] = typer.Option(
        None, "--vault", help="Trust this vault's device key (opens it: passphrase from --key-file / env / prompt)."
    ),
    key_file: KeyFile = None,
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Report valid / untrusted / tampered / unsigned with the reason; exit 0 only when valid.

    valid needs a trusted signer: the device's key (--vault) or a key given with --public-key.
    An intact manifest signed by any other key is "untrusted" (exit 1).
    """
    from personal.provenance.labelled import sidecar_path
    from personal.provenance.manifest import load_manifest
    from personal.provenance.verify import Verdict, trusted_key_ids, verify_labelled

    trusted = list(public_key or [])
    trusted_key_ids(trusted_keys=trusted)  # a malformed --public-key is a usage error, not a verdict
    if vault is not None:
        from personal.cli_common import open_vault

        with open_vault(vault, key_file) as v:
            trusted.append(v.signing_key().public_key())  # from the sealed key, not the clear meta copy
    text = _read_text(file)
    path = manifest or sidecar_path(file)
    if not path.is_file():
        verdict = Verdict("unsigned", f"no manifest found at {path}")
    else:
        try:
            verdict = verify_labelled(text, load_manifest(path.read_bytes()), trusted_keys=trusted)
        except ManifestError as exc:
            verdict = Verdict("tampered", str(exc))
    if as_json:
        typer.echo(json.dumps(verdict.to_dict()))
    else:
        hint = "; trust the signer with --vault or --public-key" if verdict.status == "untrusted" else ""
        typer.echo(f"{verdict}{hint}")
    raise typer.Exit(0 if verdict.ok else 1)


def _read_key(watermark_key: Optional[Path], vault: Optional[Path], key_file: Optional[Path]) -> bytes:
    """The watermark key: --watermark-key (hex or raw), $HOMEBODY_WATERMARK_KEY (hex), else the vault's device key."""
    if watermark_key is not None:
        try:
            data = watermark_key.read_bytes()
        except OSError as exc:
            raise WatermarkError(f"cannot read watermark key {watermark_key}: {exc.strerror}") from exc
        try:
            return bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return data
    value = os.environ.get(KEY_ENV)
    if value:
        try:
            return bytes.fromhex(value.strip())
        except ValueError as exc:
            raise WatermarkError(f"{KEY_ENV} is not hex") from exc
    from personal.cli_common import open_vault, resolve_vault_path
    from personal.provenance.watermark import derive_watermark_key

    if vault is None and not resolve_vault_path(None).is_file():
        raise WatermarkError(f"no watermark key: pass --watermark-key FILE, set {KEY_ENV} (hex), or --vault for the device's key")
    with open_vault(vault, key_file) as v:
        return derive_watermark_key(v.signing_key())


@label_app.command("detect")
def detect(
    file: Path = typer.Argument(..., help="The text to test (a visible label, if present, is ignored)."),
    watermark_key: Optional[Path] = typer.Option(None, "--watermark-key", help=f"Watermark key file (hex or raw bytes); else ${KEY_ENV}, else the vault's device key."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="Manifest with the watermark settings (default: FILE.manifest.json if present)."),
    tokenizer: str = typer.Option("smollm2-135m", "--tokenizer", help="Tokenizer of the generating model: registry name, HF folder, or .gguf file."),
    threshold: float = typer.Option(4.0, "--threshold", help="z-score above which the text is called watermarked."),
    as_json: bool = typer.Option(False, "--json", help="Print the detection as JSON."),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Print the watermark z-score, its p-value and the verdict."""
    from personal.provenance.labelled import read_sidecar, sidecar_path
    from personal.provenance.labels import strip_any_label
    from personal.provenance.tokenizers import load_tokenizer
    from personal.provenance.watermark import WatermarkSettings, detect_watermark, settings_from_spec

    text = _read_text(file)
    key = _read_key(watermark_key, vault, key_file)
    info = read_sidecar(manifest or sidecar_path(file)) if (manifest or sidecar_path(file).is_file()) else None
    spec = (info or {}).get("watermark") or None
    settings = settings_from_spec(spec, WatermarkSettings(z_threshold=threshold))
    content = strip_any_label(text, (info or {}).get("label"))
    result = detect_watermark(
        content, load_tokenizer(tokenizer), key, settings=settings, vocab_size=(spec or {}).get("vocab_size")
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(
            f"score (z) {result.score:.2f}  p-value {result.p_value:.3g}  tokens scored {result.tokens_scored}  "
            f"verdict: {result.verdict}"
        )


@label_app.command("key")
def key(
    export_watermark_key: Optional[Path] = typer.Option(
        None, "--export-watermark-key", help="Write the device's (secret) watermark key, hex, to this new file (mode 600)."
    ),
    vault: VaultPath = None,
    key_file: KeyFile = None,
) -> None:
    """Show the device's public signing key and key ids (for `verify --public-key` and `detect`)."""
    from personal.cli_common import open_vault
    from personal.provenance.manifest import key_id, raw_public_key
    from personal.provenance.watermark import derive_watermark_key, watermark_key_id

    with open_vault(vault, key_file) as v:
        signer = v.signing_key()
    wm = derive_watermark_key(signer)
    typer.echo(f"public key: {raw_public_key(signer.public_key()).hex()}")
    typer.echo(f"key id: {key_id(signer.public_key())}")
    typer.echo(f"watermark key id: {watermark_key_id(wm)}")
    if export_watermark_key is not None:
        try:
            fd = os.open(export_watermark_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise WatermarkError(f"{export_watermark_key} exists: not overwriting a key file") from exc
        with os.fdopen(fd, "w") as f:
            f.write(wm.hex() + "\n")
        typer.echo(f"watermark key written to {export_watermark_key} (keep it secret: it can also forge the watermark)")


def register(app: typer.Typer) -> None:
    """Add `homebody label` to the root app."""
    app.add_typer(label_app, name="label")
