"""Issue 9, acceptance 1: what slimming smollm2-135m costs and buys, on this CPU.

Variants: the fp32 base, int8, 4-bit (int4, group 32), structured pruning of 25% of the MLP
channels (calibrated on Shakespeare training roles), and pruning + int8. Each variant is slimmed
once into a slim folder, then measured in a FRESH process (so resident memory is its own):
weights file size, RSS after load, peak RSS, greedy decoding tokens/s (batch 1, 64 new tokens,
best of --repeats) and perplexity on held-out Shakespeare roles (every 10th role, never seen by
calibration). The machine may be shared: the variants run one after another, ``--rounds``
times, interleaved, and the table reports each round's tokens/s so the ratios can be judged.

    .venv/bin/python -m benchmarks.slim_quantize [--variants fp32,int8,int4,prune25,prune25+int8] [--rounds 2]

On a machine shared with other jobs, ``--paired`` is the robust speed measurement: all variants
are loaded in ONE process and decode in turn, round after round, so each ratio is taken under the
same load (sizes and perplexity are measured there too; RSS still needs the per-process runs).

    .venv/bin/python -m benchmarks.slim_quantize --paired [--variants fp32,int8,int4] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
VARIANTS = {"fp32": None, "int8": "int8", "int4": "int4", "prune25": "prune0.25", "prune25+int8": "prune0.25+int8"}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(variant: str, out_root: Path) -> Path | None:
    """Slim smollm2-135m into ``out_root/variant`` once (None for fp32)."""
    from personal.models import cache_root, load_base
    from personal.slim.manifest import is_slim_folder
    from personal.slim.pipeline import parse_spec, slim_to_folder
    from personal.slim.texts import TRAIN, load_texts
    from simulations.datasets import data_root

    spec = VARIANTS[variant]
    if spec is None:
        return cache_root() / "smollm2-135m"
    folder = out_root / variant.replace("+", "_")
    if not is_slim_folder(folder):
        base = load_base("smollm2-135m")
        calib = load_texts("shakespeare_roles", TRAIN, limit=64, root=data_root())
        slim_to_folder(base, parse_spec(spec), folder, calibration=calib)
    return folder


def measure(folder: str, new_tokens: int, repeats: int, ppl_texts: int) -> dict:
    """Runs in the child process: load, decode, perplexity; returns the measurements."""
    import torch

    from personal.models import load_base
    from personal.slim.distil import perplexity
    from personal.slim.texts import HELDOUT, load_texts
    from simulations.datasets import data_root

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    base = load_base(folder)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    model, tok = base.model, base.tokenizer
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    speeds = []
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            speeds.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t))
    sample = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    ppl = None
    if ppl_texts:
        texts = load_texts("shakespeare_roles", HELDOUT, limit=ppl_texts, root=data_root())
        ppl = perplexity(model, tok, texts, max_length=128)
    weights = Path(folder) / "model.safetensors"
    return {"load_s": round(load_s, 2), "weights_mb": round(weights.stat().st_size / 1e6, 1),
            "rss_loaded_mb": round(rss_loaded), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "tokens_per_s": round(max(speeds), 2), "tokens_per_s_all": [round(s, 2) for s in speeds],
            "perplexity": None if ppl is None else round(ppl, 3), "sample": sample[:120]}


def paired(variants: list[str], folders: dict, rounds: int, new_tokens: int, ppl_texts: int, threads: int) -> None:
    """All variants in one process, decoding in turn each round: speed ratios under equal load."""
    import statistics

    import torch

    from personal.models import load_base
    from personal.slim.distil import perplexity
    from personal.slim.texts import HELDOUT, load_texts
    from simulations.datasets import data_root

    torch.set_num_threads(threads)
    bases = {v: load_base(str(folders[v])) for v in variants}
    tok = bases[variants[0]].tokenizer
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    speed: dict[str, list[float]] = {v: [] for v in variants}
    with torch.no_grad():
        for v in variants:
            bases[v].model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
        for _ in range(rounds):
            for v in variants:
                t = time.perf_counter()
                out = bases[v].model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                speed[v].append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t))
    texts = load_texts("shakespeare_roles", HELDOUT, limit=ppl_texts, root=data_root()) if ppl_texts else []
    ppl = {v: perplexity(bases[v].model, tok, texts, max_length=128) if texts else None for v in variants}
    ref = variants[0]
    print(f"paired run: {len(variants)} variants in one process, {rounds} rounds x {new_tokens} new tokens greedy "
          f"(batch 1), torch threads {threads}; perplexity on {ppl_texts} held-out Shakespeare chunks (<=128 tokens)\n")
    print(f"| variant | weights MB | median tokens/s | median speed-up vs {ref} (per-round ratios) | perplexity | ppl change |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        ratios = [a / b for a, b in zip(speed[v], speed[ref])]
        size = (Path(folders[v]) / "model.safetensors").stat().st_size / 1e6
        dppl = f"{100 * (ppl[v] / ppl[ref] - 1):+.1f}%" if ppl[v] else "-"
        print(f"| {v} | {size:.1f} | {statistics.median(speed[v]):.2f} | {statistics.median(ratios):.2f}x "
              f"({', '.join(f'{r:.2f}' for r in ratios)}) | {ppl[v] if ppl[v] is None else round(ppl[v], 3)} | {dppl} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ppl-texts", type=int, default=48, help="held-out Shakespeare chunks (~100 tokens each)")
    ap.add_argument("--out", default=None, help="folder for the slim variants (default: <cache>/bench-slim)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--paired", action="store_true", help="all variants in one process, interleaved (see above)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in --paired mode")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.new_tokens, args.repeats, args.ppl_texts)))
        return

    from personal.models import cache_root

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}: use {', '.join(VARIANTS)}")
    out_root = Path(args.out) if args.out else cache_root() / "bench-slim"
    folders = {}
    for v in variants:
        t = time.perf_counter()
        folders[v] = build(v, out_root)
        print(f"built {v} in {time.perf_counter() - t:.1f} s: {folders[v]}", file=sys.stderr, flush=True)
    if args.paired:
        paired(variants, folders, args.rounds, args.new_tokens, args.ppl_texts, args.threads)
        return
    results: dict[str, dict] = {v: {} for v in variants}
    for r in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, "-m", "benchmarks.slim_quantize", "--child", str(folders[v]),
                   "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                   "--ppl-texts", str(args.ppl_texts if r == 0 else 0)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            print(f"round {r + 1} {v}: {res}", file=sys.stderr, flush=True)
            if r == 0:
                results[v] = res
                results[v]["tokens_per_s_rounds"] = [res["tokens_per_s"]]
            else:
                results[v]["tokens_per_s_rounds"].append(res["tokens_per_s"])
                results[v]["peak_rss_mb"] = max(results[v]["peak_rss_mb"], res["peak_rss_mb"])
    ref = results.get("fp32")
    print(f"smollm2-135m slimming, {os.cpu_count()} cores, torch threads 2, {args.new_tokens} new tokens greedy, "
          f"perplexity on {args.ppl_texts} held-out Shakespeare chunks (<=128 tokens)\n")
    print("| variant | weights MB | RSS after load MB | peak RSS MB | tokens/s per round | speed-up vs fp32 (per round) | perplexity | ppl change |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        res = results[v]
        rounds = res["tokens_per_s_rounds"]
        if ref:
            ups = " / ".join(f"{a / b:.2f}x" for a, b in zip(rounds, ref["tokens_per_s_rounds"]))
            dppl = f"{100 * (res['perplexity'] / ref['perplexity'] - 1):+.1f}%" if res["perplexity"] and ref["perplexity"] else "-"
        else:
            ups, dppl = "-", "-"
        print(f"| {v} | {res['weights_mb']} | {res['rss_loaded_mb']} | {res['peak_rss_mb']} | "
              f"{' / '.join(str(x) for x in rounds)} | {ups} | {res['perplexity']} | {dppl} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
