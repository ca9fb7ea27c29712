"""Issue 7, acceptance 3 and 4: watermark false positives, detection rate, speed and perplexity cost.

- False-positive rate on human text: 200 texts of 100–300 tokens (half Shakespeare roles, half
  SST-2 sentences joined to length) scored with a fresh device key at the default threshold.
- Detection rate: watermarked generations of `--tokens` new tokens (default 110) from the real
  `smollm2-135m`, through `generate_labelled_batch` (the one generation entry point), chat prompts.
- Cost: the first `--n-plain` prompts are also generated without the watermark, batch by batch,
  interleaved with the watermarked batch of the same prompts: tokens/s with and without (ratio
  from the same run), and perplexity of both sets of generations under the unwatermarked model.

    .venv/bin/python -m benchmarks.watermark_detection [--n-human 200] [--n-gen 200] [--n-plain 50]
        [--batch 25] [--tokens 110] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEMPLATES = [
    "Write a short paragraph about {}.",
    "Tell me something interesting about {}.",
    "Describe {} to a friend in a few sentences.",
    "What should a beginner know about {}?",
    "Write a short story that involves {}.",
]
TOPICS = [
    "the ocean", "morning routines", "a trip to Lisbon", "learning to cook", "the history of bicycles",
    "gardening in spring", "a rainy day in the city", "running a marathon", "baking bread", "the night sky",
    "a weekly gym habit", "coffee", "learning a new language", "a quiet library", "mountain hiking",
    "saving money", "a birthday party", "public transport", "playing chess", "a family dinner",
    "old photographs", "the first day at a new job", "a lost cat", "winter holidays", "street markets",
    "reading before sleep", "a football match", "a small bakery", "keeping a diary", "the moon landing",
    "a summer festival", "walking the dog", "an old lighthouse", "rainforests", "a jazz concert",
    "volunteering", "a train journey", "growing tomatoes", "a museum visit", "friendship",
]


def human_texts(tokenizer, n: int, seed: int) -> list[str]:
    """n human texts of 100–300 tokens: half from Shakespeare roles, half from SST-2 sentences."""
    from simulations.datasets import dataset_dir

    rng = random.Random(seed)
    texts: list[str] = []
    roles = sorted((dataset_dir("shakespeare_roles") / "by_play_and_character").glob("*.txt"))
    rng.shuffle(roles)
    for path in roles:
        if len(texts) >= n // 2:
            break
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        text = _to_length(tokenizer, lines, "\n", rng.randint(100, 300))
        if text:
            texts.append(text)
    rows = (dataset_dir("sst2") / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [r.split("\t")[0].strip() for r in rows if "\t" in r]
    rng.shuffle(sentences)
    pos = 0
    while len(texts) < n:
        target = rng.randint(100, 300)
        chunk = sentences[pos : pos + 40]
        pos += 40
        text = _to_length(tokenizer, chunk, " ", target)
        if text:
            texts.append(text)
    return texts


def _to_length(tokenizer, pieces: list[str], sep: str, target: int) -> str | None:
    """Join pieces until `target` tokens, then cut to exactly `target` tokens (None if too short)."""
    ids = tokenizer(sep.join(pieces), add_special_tokens=False)["input_ids"]
    if len(ids) < target:
        return None
    return tokenizer.decode(ids[:target])


def prompts(n: int) -> list[list[dict[str, str]]]:
    """n distinct chat prompts (templates × topics)."""
    out = [[{"role": "user", "content": t.format(topic)}] for topic in TOPICS for t in TEMPLATES]
    if n > len(out):
        raise SystemExit(f"at most {len(out)} distinct prompts")
    return out[:n]


def continuation_nll(model, tokenizer, prompt, content: str) -> tuple[float, int]:
    """Summed negative log-likelihood of `content`'s tokens after the chat prompt, and their count."""
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(c_ids), reduction="sum")
    return float(nll), len(c_ids)


def clopper_pearson_upper(k: int, n: int, conf: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial rate."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-human", type=int, default=200)
    ap.add_argument("--n-gen", type=int, default=200)
    ap.add_argument("--n-plain", type=int, default=50, help="prompts also generated without the watermark")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--tokens", type=int, default=110, help="new tokens per generation (min = max)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from rich.progress import Progress

    from personal.models import load_base
    from personal.provenance import WatermarkSettings, derive_watermark_key, detect_watermark, generate_labelled_batch, provenance_for

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    base = load_base(args.model)
    tok = base.tokenizer
    settings = WatermarkSettings()
    signer = Ed25519PrivateKey.generate()
    key = derive_watermark_key(signer)
    prov = provenance_for(base)

    humans = human_texts(tok, args.n_human, args.seed)
    human_det = [detect_watermark(t, tok, key, settings=settings) for t in humans]
    human_tokens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in humans]

    ps = prompts(args.n_gen)
    gen_kw = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    marked, plain = [], []
    wm_time = wm_tok = plain_time = plain_tok = 0
    with Progress() as bar:
        task = bar.add_task("generating", total=args.n_gen + args.n_plain)
        for start in range(0, args.n_gen, args.batch):
            chunk = ps[start : start + args.batch]
            t0 = time.perf_counter()
            marked += generate_labelled_batch(base.model, tok, chunk, prov, signer, watermark_key=key, settings=settings, **gen_kw)
            dt = time.perf_counter() - t0
            bar.advance(task, len(chunk))
            if start < args.n_plain:
                # Same prompts, same batch shape, right after: the speed ratio is from the same conditions.
                chunk_plain = chunk[: max(0, args.n_plain - start)]
                if len(chunk_plain) == len(chunk):
                    wm_time += dt
                    wm_tok += len(chunk) * args.tokens
                t0 = time.perf_counter()
                plain += generate_labelled_batch(base.model, tok, chunk_plain, prov, signer, watermark_key=None, **gen_kw)
                if len(chunk_plain) == len(chunk):
                    plain_time += time.perf_counter() - t0
                    plain_tok += len(chunk) * args.tokens
                bar.advance(task, len(chunk_plain))
            # A line per batch: on a shared machine this run is long, and a log shows where it is.
            print(f"{time.strftime('%H:%M:%S')} {len(marked)}/{args.n_gen} watermarked, {len(plain)}/{args.n_plain} plain",
                  flush=True)

    gen_det = [detect_watermark(o.content, tok, key, settings=settings) for o in marked]
    plain_det = [detect_watermark(o.content, tok, key, settings=settings) for o in plain]
    gen_tokens = [len(tok(o.content, add_special_tokens=False)["input_ids"]) for o in marked]

    nll_marked = [continuation_nll(base.model, tok, p, o.content) for o, p in zip(marked, ps)]
    nll_plain = [continuation_nll(base.model, tok, p, o.content) for o, p in zip(plain, ps)]

    def corpus_ppl(nlls):
        """Corpus perplexity (total NLL / total tokens) and the median per-text perplexity."""
        total, count = sum(a for a, _ in nlls), sum(b for _, b in nlls)
        return math.exp(total / max(count, 1)), float(np.median([math.exp(a / max(b, 1)) for a, b in nlls]))

    ppl_wm_same, ppl_wm_same_med = corpus_ppl(nll_marked[: len(plain)])
    ppl_plain, ppl_plain_med = corpus_ppl(nll_plain)
    ppl_wm_all, ppl_wm_all_med = corpus_ppl(nll_marked)

    fp = sum(d.verdict == "watermarked" for d in human_det)
    long_enough = [d for d, n in zip(gen_det, gen_tokens) if n >= 100]
    tp = sum(d.verdict == "watermarked" for d in long_enough)
    res = {
        "started": started,
        "model": args.model,
        "threads": torch.get_num_threads(),
        "settings": {"greenlist_ratio": settings.greenlist_ratio, "bias": settings.bias, "seeding": settings.seeding_scheme,
                     "z_threshold": settings.z_threshold, "sampling": "multinomial, temperature 1.0"},
        "human": {"n": len(humans), "tokens_min": min(human_tokens), "tokens_max": max(human_tokens),
                  "false_positives": fp, "fpr": fp / len(humans), "fpr_upper95": clopper_pearson_upper(fp, len(humans)),
                  "z_mean": float(np.mean([d.score for d in human_det])), "z_max": float(max(d.score for d in human_det))},
        "generated": {"n": len(marked), "n_at_least_100_tokens": len(long_enough), "tokens_min": min(gen_tokens),
                      "detected": tp, "tpr": tp / max(len(long_enough), 1),
                      "z_mean": float(np.mean([d.score for d in gen_det])), "z_min": float(min(d.score for d in gen_det))},
        "plain_generated": {"n": len(plain), "flagged": sum(d.verdict == "watermarked" for d in plain_det),
                            "z_mean": float(np.mean([d.score for d in plain_det])) if plain_det else None},
        "speed": {"tokens_per_s_watermarked": wm_tok / wm_time if wm_time else None,
                  "tokens_per_s_plain": plain_tok / plain_time if plain_time else None,
                  "batch": args.batch},
        "perplexity": {"plain": ppl_plain, "watermarked_same_prompts": ppl_wm_same,
                       "plain_median": ppl_plain_med, "watermarked_same_prompts_median": ppl_wm_same_med,
                       "watermarked_all": ppl_wm_all, "watermarked_all_median": ppl_wm_all_med},
        "examples": {"watermarked": str(marked[0])[:300], "human": humans[0][:200]},
    }
    print(json.dumps(res, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
