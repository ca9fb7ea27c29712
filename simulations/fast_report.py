"""What the fast engine adds to results.json besides its rounds: the habit scorer's run, the budget
split, throughput, and each device's ledger summary for the population privacy report. `engine` is
a simulations.engine_fast.FastEngine (not imported here: that module imports this one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from simulations.config import SimulationConfig

if TYPE_CHECKING:
    from simulations.devices import SimDevice


def habit_scorer_summary(engine, progress: Callable[[str, int], Callable[[int], None]]) -> dict:
    """Federated: run the habit scorer's DP-FedAvg (a progress line per round); what results.json says about it."""
    cfg = engine.cfg
    if engine.runs_scorer:
        advance = progress(f"habit scorer: DP-FedAvg, {cfg.scorer_rounds} rounds", cfg.scorer_rounds)
        return {"kind": "federated", "predictor": cfg.predictor, "combine_weight": cfg.combine_weight,
                **engine.train_scorer(lambda r: advance(1))}
    from simulations.habit_sim import OWN_COUNTS

    kind = f"own counts ({OWN_COUNTS.replace('_', ' ')}), no release" if cfg.mode == "local" else "off"
    return {"kind": kind, "predictor": cfg.predictor, "combine_weight": cfg.combine_weight}


def predictor_summary(engine) -> dict:
    """What this run trains for its predictor (the ablation: what is not used is not trained)."""
    from simulations.habit_sim import OWN_COUNTS

    cfg, trained = engine.cfg, []
    if engine.runs_scorer:
        trained.append("habit scorer (DP-FedAvg, user-level)" if not cfg.non_private else "habit scorer (NON-PRIVATE)")
    if cfg.trains_lora and cfg.mode == "federated":
        trained += ["LoRA rounds (DP-FedAvg, user-level)" if not cfg.non_private else "LoRA rounds (NON-PRIVATE)",
                    "personal LoRA fine-tune (on device, not released)"]
    elif cfg.trains_lora:
        trained.append("local LoRA adapter (DP-SGD, record-level)" if not cfg.non_private else "local LoRA adapter (NON-PRIVATE)")
    return {"predictor": cfg.predictor, "trained": trained, "lora_rounds": cfg.rounds if cfg.trains_lora else 0,
            "own_counts": OWN_COUNTS,
            "device_rule": ("the shared habit scorer if the federation's usefulness check kept it and the device has more "
                            "than 16 training events, else the device's own counts" if engine.runs_scorer
                            else "the device's own counts")}


def budget_split(engine) -> dict:
    """The user-level budget of each part (habit scorer, LoRA rounds) and their composition, as the accountant states it."""
    from federation.device import round_mechanism
    from privacy.accountant import compute_epsilon
    from simulations.devices import GATE_ACCOUNTANT

    cfg = engine.cfg
    if cfg.non_private:
        return {"habit_scorer": None, "lora": None, "total": None}
    prior = list(engine.scorer_plan.prior) if engine.scorer_plan else []
    lora = [round_mechanism(engine.fcfg, engine.devices_per_round / len(engine.devices), cfg.rounds)] if cfg.trains_lora else []
    part = lambda mechs: compute_epsilon(mechs, cfg.delta, GATE_ACCOUNTANT) if mechs else None  # noqa: E731
    if prior and lora:
        note = (f"the habit scorer's noise is calibrated for {cfg.scorer_share:g} x ε, then the LoRA rounds' noise for "
                "the whole ε with the scorer's release as a prior: every ledger composes both")
    else:
        note = ("count features only: the habit scorer and its usefulness check get the whole ε; no LoRA round runs" if prior else
                "LoRA only: no habit scorer runs; the LoRA rounds get the whole ε" if lora else "nothing is released")
    return {"habit_scorer": part(prior), "lora": part(lora), "total": part(prior + lora) or 0.0, "note": note}


def throughput(results: dict, engine) -> dict:
    """Device-rounds per minute over the rounds, the training share of the time, the workers used."""
    rounds_s = sum(r["wall_s"] for r in results["rounds"])
    device_rounds = sum(r.get("sampled", r.get("devices_evaluated", 0)) for r in results["rounds"])
    stats = engine.pool.broadcast("stats")
    return {"rounds_s": rounds_s, "device_rounds": device_rounds,
            "device_rounds_per_min": 60 * device_rounds / rounds_s if rounds_s else None,
            "train_s": engine.train_seconds, "encode_s": engine.encode_seconds,
            "examples_trained": engine.train_examples_seen, "workers": engine.pool.workers,
            "devices_per_worker": [list(engine.pool.owner.values()).count(i) for i in range(engine.pool.workers)],
            "ray_address": engine.cfg.ray_address, "nodes": len({s.node for s in stats}),
            "feature_cache": {"hits": sum(s.hits for s in stats), "misses": sum(s.misses for s in stats)}}


def vault_summaries(devices: Sequence["SimDevice"], cfg: SimulationConfig) -> tuple[str, list]:
    """(accountant, a privacy.report.DeviceSummary per device from the ledger in its own vault)."""
    from personal.vault import Vault
    from privacy.report import DeviceSummary
    from simulations.devices import GATE_ACCOUNTANT

    out = []
    for d in devices:
        with Vault.open(d.vault_path, d.passphrase) as vault:
            out.append(DeviceSummary.from_ledger(vault.db, d.user, d.user, cfg.epsilon_unit, GATE_ACCOUNTANT,
                                                 signer=vault.signing_key()))
    return GATE_ACCOUNTANT, out
