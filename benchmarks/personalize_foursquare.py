"""Issue 3, acceptance 1: next venue category on Foursquare NYC, the 100 users with most check-ins.

For every user: chronological split (last 20% held out), then side by side on the held-out events:
most-frequent, per-user Markov, base without adapter (zero-shot similarity), non-private LoRA and
DP-LoRA at epsilon 1, 3, 8 (record-level, delta 1e-5). One frozen minilm-l6 is loaded once;
LoRA sits on the top layer(s) so the lower layers' features are computed once per user and shared
by the four trainings. Prints a markdown table (mean over users) and writes JSON with --json.

    .venv/bin/python -m benchmarks.personalize_foursquare [--users 100] [--epochs 3] [--json out.json]
    # two shards side by side, then one table:
    ... --users 50 --json a.json & ... --users 50 --skip 50 --json b.json; ... --merge a.json b.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--dp-epochs", type=float, default=None, help="epochs for the DP runs (default: --epochs)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--q", type=float, default=0.1, help="Poisson sample rate shared by all users (one noise calibration per epsilon)")
    ap.add_argument("--layers", default="-1", help="comma-separated LoRA layers (negative = from the top)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--epsilons", default="8,3,1")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest when other work shares the 2 cores)")
    ap.add_argument("--history", type=int, default=1, help="previous events in the context text (k)")
    ap.add_argument("--max-train", type=int, default=120,
                    help="train on each user's most recent N training events (0 = all); evaluation uses all held-out events")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N users (quick looks at mid-size users)")
    ap.add_argument("--shard", default="0/1", help="I/N: this process takes users I, I+N, I+2N, ... of the selection")
    ap.add_argument("--plans", default=None, help="JSON cache of the calibrated DP plans (shards share one calibration)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only print the table of shard results written by earlier --json runs")
    args = ap.parse_args()
    if args.merge:
        return _merge(args.merge)

    import torch
    from rich.progress import Progress

    from personal.evaluate import baseline_scores, chronological_split, model_rankings, query_texts, topk, zero_shot_rankings
    from personal.examples import events_to_examples, label_space
    from personal.models import load_base
    from personal.training import DPConfig, LoraSettings, TrainConfig, plan_mechanism, train_adapter, wrap
    from simulations.populations import foursquare_nyc, select_devices

    torch.set_num_threads(args.threads)
    pop = select_devices(foursquare_nyc(), args.users + args.skip)
    shard, shards = (int(x) for x in args.shard.split("/"))
    pop.devices = pop.devices[args.skip:][shard::shards]
    base = load_base(args.model)
    lora = LoraSettings(r=args.rank, alpha=2 * args.rank, layers=tuple(int(x) for x in args.layers.split(",")))
    pm = wrap(base, lora)
    cfg = TrainConfig(lora=lora, epochs=args.epochs, sample_rate=args.q, lr=args.lr, max_length=48)
    dp_cfg = TrainConfig(lora=lora, epochs=args.dp_epochs or args.epochs, sample_rate=args.q, lr=args.lr,
                         max_length=48)
    epsilons = [float(e) for e in args.epsilons.split(",") if e]  # run order = this order
    # Same q and steps for every user, so the noise is calibrated once per epsilon (PLD accountant).
    plans = _plans(args, dp_cfg, epsilons)
    rows: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    def add(name: str, score: dict[str, float], took: float = 0.0) -> None:
        rows.setdefault(name, []).append(score)
        seconds[name] = seconds.get(name, 0.0) + took

    with Progress() as bar:
        task = bar.add_task("users", total=len(pop.devices))
        for dev in pop.devices:
            train, queries = chronological_split(dev.events)
            truths = [q.target.event for q in queries]
            labels = label_space(train)
            examples = events_to_examples(train, history=args.history)
            if args.max_train:
                examples = examples[-args.max_train:]
            texts = query_texts(queries, history=args.history)
            for name, score in baseline_scores(train, queries).items():
                add(name, score)
            t = time.perf_counter()
            pm.clear(labels)
            add("base, no adapter", topk(zero_shot_rankings(pm, texts, labels, max_length=48), truths),
                time.perf_counter() - t)
            runs = [("LoRA non-private", cfg, DPConfig.non_private(), None)]
            runs += [(f"DP-LoRA eps={e:g}", dp_cfg, DPConfig(epsilon=e, delta=1e-5, max_grad_norm=args.clip), plans[e])
                     for e in epsilons]
            for name, c, dp, plan in runs:
                t = time.perf_counter()
                res = train_adapter(base, examples, labels, c, dp, plan=plan)
                pm.load_adapter(res.adapter)
                add(name, topk(model_rankings(pm, texts, max_length=48), truths), time.perf_counter() - t)
            bar.advance(task)
            if args.json:  # after every user, so a cut-short run still leaves its finished users
                _dump(args, rows, seconds, time.perf_counter() - t_start, plans, pop, lora, dp_cfg)

    total = time.perf_counter() - t_start
    for e, p in plans.items():
        print(f"DP eps={e:g}: noise multiplier {p.noise_multiplier:.3f}, q {p.sample_rate}, {p.steps} steps, delta 1e-5, "
              f"PLD epsilon {p.epsilon:.3f}")
    header = _header(args, pop, lora, dp_cfg)
    _table(rows, seconds, header, len(rows["markov"]), total)
    if args.json:
        _dump(args, rows, seconds, total, plans, pop, lora, dp_cfg)


def _plans(args, dp_cfg, epsilons) -> dict:
    """One PLD calibration per epsilon (q and steps are shared by all users), cached in --plans."""
    from personal.training import DPConfig, MechanismPlan, plan_mechanism

    key = f"q={args.q} epochs={dp_cfg.epochs}"
    cached = json.load(open(args.plans)) if args.plans and os.path.exists(args.plans) else {}
    plans = {}
    for e in epsilons:
        if f"{key} eps={e:g}" in cached:
            plans[e] = MechanismPlan(**cached[f"{key} eps={e:g}"])
        else:
            plans[e] = plan_mechanism(1000, dp_cfg, DPConfig(epsilon=e, delta=1e-5, max_grad_norm=args.clip))
            cached[f"{key} eps={e:g}"] = vars(plans[e])
    if args.plans:
        with open(args.plans, "w") as fh:
            json.dump(cached, fh, indent=1)
    return plans


def _header(args, pop, lora, dp_cfg) -> str:
    return (f"base {args.model}, LoRA r={args.rank} layers {lora.layers}, "
            f"epochs {args.epochs} (DP {dp_cfg.epochs}), history k={args.history}, most recent "
            f"{args.max_train or 'all'} training events per user, sample rate {args.q}, lr {args.lr}, clip {args.clip}")


def _dump(args, rows, seconds, wall, plans, pop, lora, dp_cfg) -> None:
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"args": vars(args), "header": _header(args, pop, lora, dp_cfg), "seconds": seconds, "wall_s": wall,
                   "plans": {str(e): vars(p) for e, p in plans.items()}, "per_user": rows}, fh, indent=1)
    os.replace(tmp, args.json)


def _table(rows: dict, seconds: dict, header: str, users: int, wall: float) -> None:
    summary = {name: {k: float(np.mean([s[k] for s in scores])) for k in scores[0]} for name, scores in rows.items()}
    markov = summary["markov"]["top1"]
    print(f"\nFoursquare NYC, {users} of the users with most check-ins, {header}; wall {wall:.0f} s\n")
    print("| method | mean top-1 | mean top-5 | top-1 gap vs Markov | train+eval s (all users) |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['top1']:.3f} | {s['top5']:.3f} | {s['top1'] - markov:+.3f} | {seconds.get(name, 0):.0f} |")


def _merge(paths: list[str]) -> None:
    rows: dict[str, list] = {}
    seconds: dict[str, float] = {}
    parts = [json.load(open(p)) for p in paths]
    for part in parts:
        for name, scores in part["per_user"].items():
            rows.setdefault(name, []).extend(scores)
        for name, s in part["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + s
    for e, p in parts[0]["plans"].items():
        print(f"DP eps={float(e):g}: noise multiplier {p['noise_multiplier']:.3f}, q {p['sample_rate']}, {p['steps']} steps, "
              f"delta {p['delta']:g}, PLD epsilon {p['epsilon']:.3f}")
    _table(rows, seconds, f"{len(paths)} shards side by side; " + parts[0]["header"],
           len(next(iter(rows.values()))), max(p["wall_s"] for p in parts))


if __name__ == "__main__":
    main()
