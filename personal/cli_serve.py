"""`homebody serve`: the local OpenAI-compatible API over one owner's vault (a thin layer over personal.server)."""

from __future__ import annotations

import ipaddress
from typing import Optional

import typer

from personal.base_identity import DEFAULT_BASE
from personal.cli_common import KeyFile, VaultPath, console, err_console, get_passphrase, resolve_vault_path
from personal.errors import NotAVault
from personal.habits import DEFAULT_PREDICTOR, check_predictor

MODEL_HELP = "Base model of the owner's adapter: tiny, tiny-causal, minilm-l6, smollm2-135m or a local folder."


def serve(
    vault: VaultPath = None,
    key_file: KeyFile = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default: the API is for this device)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: any free port)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Whose assistant (default: the vault's only profile)."),
    model: str = typer.Option(DEFAULT_BASE, "--model", help=MODEL_HELP),
    chat_model: Optional[str] = typer.Option(None, "--chat-model", help="Causal base that answers chats (default: --model if causal, else its partner)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, max=1024, help="Default answer length in tokens."),
    token_cap: int = typer.Option(512, "--max-tokens-cap", min=1, max=4096, help="No answer is longer, whatever a request asks."),
    chat_batch: int = typer.Option(8, "--chat-batch", min=1, max=256, help="Concurrent chats answered in one generate call."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="Larger request bodies get 413."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's; 1 helps on a busy machine)."),
    predictor: Optional[str] = typer.Option(None, "--predictor", show_default=False,
                                            help=f"What GET /v1/suggestions ranks with unless a request says: habit, lora or "
                                                 f"combined (default: {DEFAULT_PREDICTOR})."),
) -> None:
    """Serve the owner's assistant: OpenAI-compatible chat, events, suggestions, personalization, budget, erasure."""
    from personal.assistant import Assistant
    from personal.auth import ensure_token, token_path
    from personal.server import serve as run

    check_predictor(predictor)  # a bad option fails before anything is created
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    path = resolve_vault_path(vault)
    if not path.is_file():
        raise NotAVault(f"no vault at {path}; create one with `homebody vault init --vault {path}`")
    token, created = ensure_token(path)
    if created:
        err_console.print(f"created API token {token_path(path)} (owner-only)")
    if not _loopback(host):
        err_console.print(f"[yellow]warning: binding {host} exposes the API beyond this device (the token is still required)[/]")
    with Assistant.open(path, get_passphrase(key_file), profile, model, chat_model=chat_model,
                        max_new_tokens=min(max_new_tokens, token_cap), token_cap=token_cap,
                        chat_batch=chat_batch, predictor=predictor) as assistant:

        def ready(url: str) -> None:
            console.print(f"homebody API for {assistant.profile!r} at {url} (token: {token_path(path)}); Ctrl-C stops",
                          highlight=False, soft_wrap=True)

        run(assistant, token, host, port, max_body_bytes=max_body_bytes, on_ready=ready)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add `serve` to the root app."""
    app.command("serve")(serve)
