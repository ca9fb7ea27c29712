"""Issue 3 benchmarks: DP/non-DP step time, wall time for a 500-event owner, adapter sizes, peak RSS and ask speed.

Each measurement runs in a fresh child process (so peak RSS is that job's alone):

- ``steps``: minilm-l6, LoRA r=8 on the top layer, the same 500-event synthetic owner, the real
  ``train_adapter`` loop with and without DP-SGD (opacus hooks, clipping, noise); median step time.
- ``owner500``: ``personalize`` end to end on a real vault (budget check, PLD noise calibration to
  epsilon 3, training, signed ledger commit, sealed adapter) for one owner with 500 events.
- ``smollm2 DTYPE``: ``personalize`` with smollm2-135m (frozen weights in DTYPE, LoRA r=8 on q/v of
  the top layer) on an owner with ``--smol-events`` events, then ``ask`` (48 new tokens); reports
  peak RSS, adapter size and tokens/s.

    .venv/bin/python -m benchmarks.personalize_costs [--threads 1] [--smol-events 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def _owner(n: int):
    sys.path.insert(0, str(REPO))
    from tests.personal.pers_helpers import routine_owner

    weeks = n // 20 + 2
    return routine_owner("owner", weeks=weeks)[:n]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job_steps(args) -> dict:
    """Median step time of the real loop, DP vs non-DP, same data and settings."""
    import numpy as np

    from personal.examples import events_to_examples, label_space
    from personal.models import load_base
    from personal.training import DPConfig, LoraSettings, TrainConfig, train_adapter

    events = _owner(500)
    base = load_base("minilm-l6")
    cfg = TrainConfig(lora=LoraSettings(r=8, layers=(-1,)), epochs=2, batch_size=32)
    ex, labels = events_to_examples(events), label_space(events)
    train_adapter(base, ex, labels, cfg, DPConfig.non_private())  # warm-up (features memoised after)
    out = {}
    for name, dp in (("non_dp", DPConfig.non_private()), ("dp", DPConfig(noise_multiplier=1.0)),
                     ("non_dp_2", DPConfig.non_private()), ("dp_2", DPConfig(noise_multiplier=1.0))):
        r = train_adapter(base, ex, labels, cfg, dp)
        out[name] = float(np.median(r.step_seconds))
    nd, d = (out["non_dp"] + out["non_dp_2"]) / 2, (out["dp"] + out["dp_2"]) / 2
    return {"examples": len(ex), "steps_per_run": r.steps, "median_step_s_non_dp": nd, "median_step_s_dp": d,
            "ratio": d / nd, "adapter_bytes_minilm": r.adapter.nbytes(), "adapter_params_minilm": r.adapter.num_parameters(),
            "peak_rss_mb": _peak_rss_mb()}


def job_owner500(args) -> dict:
    """personalize() end to end for a 500-event owner (epsilon 3), with its phases timed."""
    from personal.models import load_base
    from personal.personalize import personalize
    from personal.training import DPConfig, LoraSettings, TrainConfig
    from personal.vault import Vault, VaultConfig

    t0 = time.perf_counter()
    base = load_base("minilm-l6")
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d, Vault.create(Path(d) / "v.db", "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(_owner(500))
        t1 = time.perf_counter()
        out = personalize(v, "owner", base, TrainConfig(lora=LoraSettings(r=8, layers=(-1,))), DPConfig(epsilon=3.0))
        wall = time.perf_counter() - t1
    return {"load_s": t_load, "personalize_wall_s": wall, "training_s": out.result.seconds,
            "accounting_and_io_s": wall - out.result.seconds, "steps": out.result.steps,
            "privacy": out.privacy_label, "peak_rss_mb": _peak_rss_mb()}


def job_smollm2(args) -> dict:
    """personalize + ask with smollm2-135m, frozen weights in args.dtype."""
    from personal.adapter import LoraSettings
    from personal.models import load_base
    from personal.personalize import personalize
    from personal.predict import ask
    from personal.training import DPConfig, TrainConfig
    from personal.vault import Vault, VaultConfig

    t0 = time.perf_counter()
    base = load_base("smollm2-135m", dtype=args.dtype)
    t_load = time.perf_counter() - t0
    rss_loaded = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as d, Vault.create(Path(d) / "v.db", "pw", VaultConfig(fast_kdf=True)) as v:
        v.add_events(_owner(args.smol_events))
        t1 = time.perf_counter()
        cfg = TrainConfig(lora=LoraSettings(r=8, layers=(-1,)), epochs=1, batch_size=16, max_length=48)
        out = personalize(v, "owner", base, cfg, DPConfig(noise_multiplier=1.0))
        wall = time.perf_counter() - t1
        rss_trained = _peak_rss_mb()
        # phrasing="model": this measures the generation cost (a templated habit answer generates nothing)
        ask(v, "owner", "What do I do on Monday mornings?", base, max_new_tokens=8, phrasing="model")  # warm-up
        a = ask(v, "owner", "What do I usually do on Friday evenings?", base, max_new_tokens=48, phrasing="model")
    return {"dtype": args.dtype, "events": args.smol_events, "load_s": t_load, "personalize_wall_s": wall,
            "steps": out.result.steps, "adapter_bytes": out.adapter.nbytes(), "adapter_params": out.adapter.num_parameters(),
            "peak_rss_mb_after_load": rss_loaded, "peak_rss_mb_after_personalize": rss_trained,
            "ask_tokens": a.new_tokens, "ask_s": a.seconds, "ask_tokens_per_s": a.tokens_per_s,
            "answer": a.labelled.text[:200], "peak_rss_mb": _peak_rss_mb()}


JOBS = {"steps": job_steps, "owner500": job_owner500, "smollm2": job_smollm2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smol-events", type=int, default=100)
    ap.add_argument("--job", choices=sorted(JOBS), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="steps,owner500,smollm2:float32,smollm2:bfloat16")
    args = ap.parse_args()
    if args.job:  # child
        import torch

        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(JOBS[args.job](args)))
        return
    results = {}
    for spec in args.only.split(","):
        job, _, dtype = spec.partition(":")
        cmd = [sys.executable, "-m", "benchmarks.personalize_costs", "--job", job, "--threads", str(args.threads),
               "--smol-events", str(args.smol_events)] + (["--dtype", dtype] if dtype else [])
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{spec} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[spec] = json.loads(line[len("RESULT "):])
        results[spec]["child_wall_s"] = time.perf_counter() - t
        print(f"{spec}: {json.dumps(results[spec])}", flush=True)
    _report(results, args)


def _report(r: dict, args) -> None:
    print(f"\n(torch threads {args.threads}; each line from its own child process)\n")
    print("| measurement | value |")
    print("|---|---|")
    if "steps" in r:
        s = r["steps"]
        print(f"| DP step / non-DP step (minilm-l6, LoRA top layer, {s['examples']} examples, batch 32, median of 2x{s['steps_per_run']} steps) "
              f"| {s['ratio']:.2f} ({s['median_step_s_dp']*1e3:.0f} ms / {s['median_step_s_non_dp']*1e3:.0f} ms) |")
        print(f"| adapter size, minilm-l6 (r=8 q,v top layer + head) | {s['adapter_bytes_minilm']/1024:.1f} KiB, {s['adapter_params_minilm']:,} params |")
    if "owner500" in r:
        o = r["owner500"]
        print(f"| wall time to personalize one owner with 500 events (minilm-l6, {o['steps']} steps, epsilon 3) "
              f"| {o['personalize_wall_s']:.1f} s (training {o['training_s']:.1f} s, accounting + vault {o['accounting_and_io_s']:.1f} s; model load {o['load_s']:.1f} s) |")
    for dtype in ("float32", "bfloat16"):
        k = f"smollm2:{dtype}"
        if k in r:
            m = r[k]
            print(f"| peak RSS personalizing smollm2-135m, frozen weights {dtype} ({m['events']} events, {m['steps']} steps) "
                  f"| {m['peak_rss_mb_after_personalize']:.0f} MB (after load {m['peak_rss_mb_after_load']:.0f} MB) |")
            print(f"| adapter size, smollm2-135m (r=8 q,v top layer + head) | {m['adapter_bytes']/1024:.1f} KiB |")
            print(f"| ask tokens/s, smollm2-135m {dtype} | {m['ask_tokens_per_s']:.1f} ({m['ask_tokens']} tokens in {m['ask_s']:.1f} s) |")


if __name__ == "__main__":
    main()
