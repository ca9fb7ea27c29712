"""An assistant app on top of `homebody serve`, using the official `openai` client for chat.

Start the local API first (it prints its URL; the token sits next to the vault, owner-only):

    homebody vault init --vault ana.db
    homebody serve --vault ana.db --profile ana --model tiny-causal      # or --model smollm2-135m

then run this app against it:

    python examples/assistant_app.py --url http://127.0.0.1:8765/v1 --token-file ana.db.token

It records a week of the owner's habits, personalizes in the background within the privacy
budget (polling the job's progress), asks for suggestions, chats through `openai` (plain and
streamed), shows the visible label and the signed manifest of each answer, and the budget.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from openai import OpenAI


def week_of_habits(start: datetime) -> list[dict]:
    """What an app would record as it happens: coffee, work or the park, the subway home."""
    events = []
    for d in range(7):
        day = start + timedelta(days=d)
        events.append({"event": "Coffee Shop", "timestamp": day.replace(hour=8, minute=10).isoformat()})
        events.append({"event": "Office" if day.weekday() < 5 else "Park", "timestamp": day.replace(hour=9).isoformat()})
        events.append({"event": "Subway", "timestamp": day.replace(hour=18, minute=20).isoformat(),
                       "context": {"weather": "rain" if d % 3 == 0 else "sun"}})
    return events


def personalize(api: httpx.Client, settings: dict, timeout: float = 600) -> dict:
    """Start a personalization job and follow its progress until it ends."""
    r = api.post("/personalize", json=settings)
    if r.status_code == 409:  # e.g. the budget is spent: the body names what remains
        raise SystemExit(f"personalization refused: {r.json()['error']['message']}")
    r.raise_for_status()
    job = r.json()
    deadline = time.time() + timeout
    while job["state"] not in ("done", "failed"):
        print(f"  training: step {job['step']}/{job['total']}", flush=True)
        if time.time() > deadline:
            raise SystemExit(f"job {job['id']} still {job['state']} after {timeout} s")
        time.sleep(0.5)
        job = api.get(f"/jobs/{job['id']}").json()
    if job["state"] == "failed":
        raise SystemExit(f"personalization failed: {job['error']['message']}")
    return job["result"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8765/v1", help="The API's base URL, as `homebody serve` prints it.")
    p.add_argument("--token-file", type=Path, required=True, help="<vault>.token, written at `homebody vault init`.")
    p.add_argument("--noise-multiplier", type=float, default=None, help="Instead of the default target epsilon 3.")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)

    token = args.token_file.read_text().strip()
    client = OpenAI(base_url=args.url, api_key=token)  # the official client, unchanged
    api = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=600)

    print("models:", [m.id for m in client.models.list()])
    added = api.post("/events", json={"events": week_of_habits(datetime(2026, 3, 2))}).json()
    print(f"recorded {added['added']} events ({added['total']} stored)")

    settings = {"epochs": args.epochs, "batch_size": 8}
    if args.noise_multiplier is not None:
        settings["noise_multiplier"] = args.noise_multiplier
    result = personalize(api, settings)
    print("personalized:", result["privacy"])

    tips = api.get("/suggestions", params={"k": 3, "at": "2026-03-09T08:00"}).json()
    print("suggestions for Monday 08:00:", ", ".join(f"{s['event']} {s['probability']:.2f}" for s in tips["items"]))

    question = [{"role": "user", "content": "What do I usually do on weekday mornings?"}]
    answer = client.chat.completions.create(model="homebody", messages=question, max_tokens=args.max_tokens)
    extra = answer.model_extra["homebody"]  # the label is in the text; the signed manifest rides here
    print("answer:", answer.choices[0].message.content)
    print("label:", extra["label"], "| manifest signed by", extra["manifest"]["signer"]["key_id"][:16],
          "| adapter", (extra["manifest"]["model"]["adapter_sha256"] or "none")[:16])

    print("streamed: ", end="")
    manifest = None
    for chunk in client.chat.completions.create(model="homebody", messages=question, max_tokens=args.max_tokens,
                                                stream=True):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
        if chunk.model_extra and "homebody" in chunk.model_extra:
            manifest = chunk.model_extra["homebody"]["manifest"]
    print()
    print("stream manifest signed:", bool(manifest and manifest.get("signature")))

    for b in api.get("/privacy/budget").json()["budgets"]:
        print(f"budget ({b['unit']}): spent {b['spent_epsilon']}, remaining {b['remaining_epsilon']:.3f} of {b['cap_epsilon']}")
    print(json.dumps({"ok": True, "answer_labelled": answer.choices[0].message.content.startswith(extra["label"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
