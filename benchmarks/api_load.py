"""Load on the local API: N concurrent OpenAI-style chat requests against a real `homebody serve` subprocess.

Run: .venv/bin/python -m benchmarks.api_load [--runs tiny-causal:200:16,smollm2-135m:20:8] [--max-tokens 32] [--threads N]

Each run is MODEL:REQUESTS:CHAT_BATCH. For each, the benchmark creates a fast-KDF vault with three
weeks of one owner's habits, starts `homebody serve --port 0` on 127.0.0.1 with that model, trains
the owner's adapter through the API (POST /v1/personalize, noise multiplier 1, one epoch) so the
answers use it, warms the server with one chat, then fires REQUESTS chat completions at once
(httpx.AsyncClient, one connection each) and reports errors, p50/p95/max latency and the wall
time. `tiny-causal` is the `tiny` family's chat model. Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx

PASSPHRASE = "benchmark-passphrase"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunResult:
    model: str
    requests: int
    batch: int
    errors: int
    p50: float
    p95: float
    worst: float
    wall: float
    used_adapter: float
    tokens: float
    server_cpu: float  # CPU seconds the server process used for the burst (after the warm-up chat)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), a measure the machine's other load barely moves."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def habits(days: int = 21) -> list[dict]:
    start, out = datetime(2026, 1, 5), []
    for d in range(days):
        day = start + timedelta(days=d)
        out.append({"event": "Coffee Shop", "timestamp": day.replace(hour=8, minute=d % 30).isoformat()})
        out.append({"event": "Office" if day.weekday() < 5 else "Park", "timestamp": day.replace(hour=9).isoformat()})
        out.append({"event": "Subway", "timestamp": day.replace(hour=18, minute=(7 * d) % 40).isoformat()})
    return out


def start_server(vault: Path, model: str, batch: int, max_tokens: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "HOMEBODY_PASSPHRASE": PASSPHRASE, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "simulations.cli", "serve", "--vault", str(vault), "--port", "0", "--model", model,
           "--chat-batch", str(batch), "--max-new-tokens", str(max_tokens)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        m = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"homebody serve did not start for {model}")


def prepare(url: str, token: str) -> None:
    """Owner's events and adapter, through the API."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=1800) as c:
        c.post("/events", json={"events": habits()}).raise_for_status()
        r = c.post("/personalize", json={"noise_multiplier": 1.0, "epochs": 1, "batch_size": 8})
        r.raise_for_status()
        job = r.json()
        while job["state"] not in ("done", "failed"):
            time.sleep(0.5)
            job = c.get(f"/jobs/{job['id']}").json()
        if job["state"] == "failed":
            raise SystemExit(f"personalization failed: {job['error']}")


async def warm(url: str, token: str, max_tokens: int) -> None:
    """One chat before the burst: loads the chat model."""
    await fire(url, token, 1, max_tokens)


async def fire(url: str, token: str, n: int, max_tokens: int) -> tuple[list[float], int, list[dict], float]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=3600,
                                 limits=limits) as c:
        async def one(i: int) -> tuple[float, dict | None]:
            body = {"model": "homebody", "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"Question {i}: what do I usually do on Monday mornings?"}]}
            t = time.perf_counter()
            try:
                r = await c.post("/chat/completions", json=body)
                ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith(r.json()["homebody"]["label"])
                return time.perf_counter() - t, (r.json() if ok else None)
            except httpx.HTTPError:
                return time.perf_counter() - t, None

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    lat = [t for t, _ in results]
    good = [b for _, b in results if b is not None]
    return lat, n - len(good), good, wall


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run(model: str, n: int, batch: int, max_tokens: int, threads: int | None = None) -> RunResult:
    from personal.assistant import Assistant
    from personal.auth import read_token
    from personal.vault import VaultConfig

    with tempfile.TemporaryDirectory() as tmp:
        vault = Path(tmp) / "vault.db"
        Assistant.create(vault, PASSPHRASE, "owner", model, vault_config=VaultConfig(fast_kdf=True)).close()
        proc, url = start_server(vault, model, batch, max_tokens, threads)
        try:
            token = read_token(vault)
            prepare(url, token)
            asyncio.run(warm(url, token, max_tokens))
            cpu0 = cpu_seconds(proc.pid)
            lat, errors, good, wall = asyncio.run(fire(url, token, n, max_tokens))
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(60)
    used = sum(b["homebody"]["used_adapter"] for b in good) / max(1, len(good))
    tokens = statistics.mean(b["usage"]["completion_tokens"] for b in good) if good else 0.0
    return RunResult(model, n, batch, errors, pct(lat, 50), pct(lat, 95), max(lat), wall, used, tokens, cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="tiny-causal:200:16,smollm2-135m:20:8", help="MODEL:REQUESTS:CHAT_BATCH,...")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (serve --threads).")
    args = p.parse_args()
    rows = []
    for spec in args.runs.split(","):
        model, n, batch = spec.split(":")
        res = run(model, int(n), int(batch), args.max_tokens, args.threads)
        rows.append(res)
        print(f"done {spec}: errors {res.errors}, p50 {res.p50:.2f} s, p95 {res.p95:.2f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} "
          f"at the end; max_tokens {args.max_tokens}; server torch threads {args.threads or 'default'}\n")
    print("| chat model | concurrent requests | chat batch | errors | p50 latency (s) | p95 latency (s) | max (s) "
          "| wall (s) | requests/s | server CPU s per request | answers with adapter | mean tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r.model
        print(f"| {name} | {r.requests} | {r.batch} | {r.errors} | {r.p50:.2f} | {r.p95:.2f} | {r.worst:.2f} | "
              f"{r.wall:.1f} | {r.requests / r.wall:.2f} | {r.server_cpu / r.requests:.3f} | {r.used_adapter:.0%} | {r.tokens:.1f} |")


if __name__ == "__main__":
    main()
