"""benchmarks.foreign_populations: a generator independent of simulations/populations.py whose files
`--dataset events:PATH` loads, one population with no time structure at all, and a tiny end-to-end run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks import foreign_populations as fp
from personal.evaluate import baseline_scores, chronological_split
from personal.events_io import read_events
from simulations.populations import load_population

SPEC = {s.name: s for s in fp.SPECS}


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds():
    from dataclasses import replace

    for spec in fp.SPECS:
        a, b = fp.owners(spec, 3), fp.owners(spec, 3)
        assert a == b and len(a) > 3 * 5, spec.name
        other = fp.owners(replace(spec, seed=spec.seed + 1), 3)
        assert [(e.timestamp, e.event) for e in other] != [(e.timestamp, e.event) for e in a], spec.name


def test_files_load_as_events_path_with_several_valid_owners(tmp_path: Path):
    paths = fp.generate(tmp_path, n=4)
    assert {p.suffix for p in paths.values()} == {".csv", ".jsonl"}  # both formats the importer reads
    for name, path in paths.items():
        events = read_events(path).events  # strict: any line the vault's validation refuses raises
        pop = load_population(f"events:{path}")
        assert len(pop.devices) == 4 >= 2, name
        assert sum(len(d) for d in pop.devices) == len(events), name
        assert all(d.events[0].timestamp.utcoffset() is not None for d in pop.devices), name
        assert len(pop.labels()) >= 5, name


def _top_level(path: Path) -> tuple[ast.Module, set[str]]:
    tree = ast.parse(path.read_text())
    return tree, {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_generator_does_not_use_the_simulations_generator():
    import simulations.populations as sp

    tree, ours = _top_level(Path(fp.__file__))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "simulations.populations" not in imported, imported
    assert not ours & _top_level(Path(sp.__file__))[1]  # no routine of it copied under its name


def _pooled(spec, n: int) -> dict[str, float]:
    """Top-1 of every counting baseline, pooled over the held-out events (last 20%) of n owners."""
    events = fp.owners(spec, n)
    by_user: dict[str, list] = {}
    for e in events:
        by_user.setdefault(e.user, []).append(e)
    hits: dict[str, float] = {}
    total = 0
    for evs in by_user.values():
        train, queries = chronological_split(evs)
        for name, s in baseline_scores(train, queries).items():
            hits[name] = hits.get(name, 0.0) + s["top1"] * len(queries)
        total += len(queries)
    return {k: v / total for k, v in hits.items()}


def test_iid_population_has_no_time_or_order_structure():
    """Counting by hour, slot or previous event gains nothing over most-frequent on a large sample,
    while the app-session (order) and sparse (weekday) populations do carry such structure, so the
    check can tell them apart. (The shift-work one is mostly noise to counting by design: its hours
    rotate.)"""
    iid = _pooled(SPEC["iid_zipf"], 160)  # about 4,400 held-out events
    for name in ("hour", "slot", "markov"):
        assert iid[name] <= iid["most_frequent"] + 0.01, (name, iid)
    for structured in ("app_sessions", "sparse_private"):
        got = _pooled(SPEC[structured], 40)
        best_timed = max(got["hour"], got["slot"], got["markov"])
        assert best_timed > got["most_frequent"] + 0.03, (structured, got)


def test_tiny_end_to_end_run_over_one_file_tabulates_every_predictor_and_resumes(tmp_path: Path):
    path = fp.generate(tmp_path / "data", [SPEC["iid_zipf"]], n=3)["iid_zipf"]
    log: list[str] = []
    rows = fp.run_population(path, tmp_path / "runs", devices=3, max_events=40, log=log.append,
                             model="tiny", rounds=1)
    assert [(r["mode"], r["epsilon"]) for r in rows] == list(fp.CONFIGS)
    for r in rows:
        assert r["devices"] == 3 and r["held_out_events"] == 3 * 8
        assert set(r["baselines"]) >= {"most_frequent", "markov", "hour", "slot", "mix", "best_counting"}
        assert set(r["gap"]) == {"habit"}  # the default predictor trains no LoRA, so only habit is scored
        for p in fp.PREDICTORS:
            if p not in r["gap"]:
                assert r[f"{p}_top1"] is None
                continue
            assert 0 <= r[f"{p}_top1"] <= 1
            assert r["gap"][p] == pytest.approx(r[f"{p}_top1"] - r["baselines"]["best_counting"])
            assert r["within_tolerance"][p] == (r["gap"][p] >= -fp.TOLERANCE)
        if r["mode"] == "federated":  # the shared scorer is released under user-level DP
            assert 0 < r["epsilon_spent_max"] <= r["epsilon"] + 1e-6
        else:  # local habit-only: the owner's own counts, nothing trained, nothing released
            assert not r["epsilon_spent_max"]
    assert sum("running" in line for line in log) == 3
    table = {"generator_commit": "x", "devices": 3, "max_events": 40,
             "populations": [{"name": "iid_zipf", "file": path.name, "runs": rows}]}
    md = fp.markdown(table)
    assert md.count("| iid_zipf |") == 3 and "best counting" in md and "local only ε=8 (record)" in md

    log.clear()  # a second call resumes: every configuration is already complete
    again = fp.run_population(path, tmp_path / "runs", devices=3, max_events=40, log=log.append,
                              model="tiny", rounds=1)
    assert not any("running" in line for line in log) and again == rows
