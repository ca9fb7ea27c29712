"""Issue 18: what the SDK's personalization costs with its old and its new (the CLI's) LoRA default.

`Assistant.personalize()` on minilm-l6 (the SDK's default base now) for one owner with 500
synthetic events, epsilon 3 (the default target), each run on a fresh vault (a fresh budget):

- ``top layer``: the default now, ``personal.training.personal_lora()`` (rank 8 on the top layer,
  what ``homebody personalize`` has always trained);
- ``all layers``: ``lora=LoraSettings()`` (rank 8 on every layer), what the SDK trained before.

Wall time is the whole job (base load, budget check and noise calibration, training, ledger
commit, sealed adapter), from ``personalize(background=False)`` to its return.

    .venv/bin/python -m benchmarks.sdk_defaults [--threads 1] [--events 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def run_one(lora, events: int) -> dict:
    """One SDK personalization on a fresh vault; returns wall time, steps, epsilon and adapter size."""
    sys.path.insert(0, str(REPO))
    from personal.adapter import Adapter
    from personal.assistant import Assistant
    from personal.vault import VaultConfig
    from tests.personal.pers_helpers import routine_owner

    owner = routine_owner("owner", weeks=events // 20 + 2)[:events]
    with tempfile.TemporaryDirectory() as d:
        with Assistant.create(Path(d) / "v.db", "pw", "owner", vault_config=VaultConfig(fast_kdf=True)) as a:
            a.vault.add_events(owner)
            t0 = time.perf_counter()
            job = a.personalize(lora=lora, background=False)
            wall = time.perf_counter() - t0
            data, _ = a.vault.get_artefact("owner", "adapter", job.result["model"])
            size = Adapter.from_bytes(data).nbytes()
    return {"wall_s": wall, "steps": job.result["steps"], "epsilon": job.result["epsilon"], "adapter_bytes": size,
            "model": job.result["model"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    import torch

    from personal.adapter import LoraSettings

    torch.set_num_threads(args.threads)
    rows = [("top layer (default now)", run_one(None, args.events)),
            ("all layers (SDK before)", run_one(LoraSettings(), args.events))]
    print(f"| SDK LoRA | base | steps | epsilon | adapter bytes | wall s |\n|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['model']} | {r['steps']} | {r['epsilon']:.2f} | {r['adapter_bytes']:,} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
