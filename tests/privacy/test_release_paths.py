"""Issue 13, acceptance 4: no release path bypasses the gate (a static scan, as the labels test does
for `generate`).

A DP release is made by a few primitives: DP-SGD training (`train_adapter` with a DP config, opacus'
`PrivacyEngine` / `DPOptimizer`), the federated device's clip + noise (`build_update`,
`add_gaussian_noise`, `train_round`), and the ledger write (`Ledger.append`, `ReleaseGate.commit` /
`commit_non_private`). The scan walks the library's source (AST) and lists every function that calls
one. Each must be in the allow-list below, with the reason it is safe; a new caller fails the test
until someone looks at it. Functions that train with DP must also call the gate themselves (its
`check` before and `commit` after), and every other `train_adapter` caller must pass
`DPConfig.non_private()` literally. `test_the_scanner_flags_a_bypass` feeds the scanner a small
module with bypasses to show that it would catch one.

Issue 13 item 1 adds two static rules: every DP `commit` names the randomness of its noise
(`details["rng"]`, which a real device's gate checks), and no seeded generator is built on the
real device's floors (personal/, federation/, privacy/) except where listed with a reason; the
simulations (simulations/) may seed, and say so in their ledger records.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.source_scan import callee as _callee, calls as _calls

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ("personal", "privacy", "federation", "simulations", "examples")

# Functions that train with DP (a release) and route it through the ReleaseGate themselves.
GATED_DP_TRAINERS = {
    "personal/personalize.py:personalize": "check -> train -> commit; the CLI, the SDK and the API all call it",
    "simulations/shards.py:_local_train": "simulation's local mode: gate.check, train, gate.commit (seeded, opted in)",
}
# DP training that is an experiment, not a release: synthetic data, the model is scored and thrown away.
DP_EXPERIMENTS = {
    "simulations/empirical_audit.py:run_whitebox_audit": "white-box audit on synthetic examples and gradient "
                                                         "canaries; only the audit's scores leave the function",
}
# Every other caller of each release primitive, and why it is not a bypass.
ALLOWED = {
    "train_adapter": {
        "federation/device.py:train_round": "plain local training; the release is the clipped, noised update, "
                                            "checked and committed through the device's gate in the same function",
        "federation/device.py:evaluate_device": "plain fine-tune for on-device evaluation; never leaves the device",
        "simulations/shards.py:_local_train": "simulation's non-private comparison run, committed right "
                                                    "after with commit_non_private (epsilon = inf)",
        "simulations/shards.py:personal_hits": "simulation: the planted-routine check's on-device fine-tune",
    },
    "train_round": {
        "federation/clientapp.py:train": "the ClientApp's train: the device's own vault gate (VaultSource)",
        "federation/secagg.py:fit": "the SecAgg+ ClientApp's fit: the same device round and gate",
        "simulations/shards.py:train": "simulation: each device's vault gate (or non-private, "
                                                       "then committed with commit_non_private right after)",
    },
    "build_update": {
        "federation/device.py:train_round": "the device round itself: check before, commit after",
        "federation/habit_round.py:release": "the numpy device release (habit scorer rounds, usefulness check): "
                                              "the gate's check (admit_round) before, commit after",
        "federation/canary.py:updates": "audit canary clients: random directions with no owner data, sent "
                                        "noise-free on purpose (they are the probe, not a release)",
    },
    "add_gaussian_noise": {
        "federation/update.py:build_update": "the clip + noise step of the device round",
    },
    "DPOptimizer": {
        "personal/training.py:_make_dp_optimizer": "inside train_adapter: callers are listed above",
    },
    "PrivacyEngine": {
        "simulations/empirical_audit.py:_run": "empirical audit experiment on synthetic canaries: the model is "
                                               "scored and thrown away, never released",
    },
    "ledger.append": {
        "privacy/budget.py:commit": "the gate: re-checks the cap, then appends",
        "privacy/budget.py:commit_non_private": "the gate: records a non-private release as epsilon = inf",
        "privacy/budget.py:set_policy": "a signed budget-policy entry (kind policy), not a release",
        "privacy/ledger.py:append": "the primitive itself: verifies the chain, then append_verified",
    },
    "gate.commit": {
        "personal/personalize.py:personalize": "the single-device release path",
        "federation/device.py:train_round": "the device round",
        "federation/device.py:settle_run": "charges the rounds a device sat out at the end of a run",
        "federation/habit_round.py:release": "the habit scorer's rounds and its usefulness check (user level)",
        "simulations/shards.py:train": "simulation: non-private comparison runs (epsilon = inf)",
        "simulations/shards.py:_local_train": "simulation's local mode",
    },
}
# References to seeded generators on the real device's floors, and why each is not DP noise or sampling.
SEEDED_NAMES = {"default_rng", "RandomState", "Generator", "manual_seed", "Random"}
REAL_FLOORS = ("personal", "federation", "privacy")
SEEDED_ALLOWED = {
    "privacy/randomness.py:noise_source": "a seeded generator only when a simulation or test passes a seed",
    "privacy/empirical.py:audit_from_scores": "tie-breaking among equal audit scores (no release)",
    "personal/training.py:__init__": "LoRA's initial weights (B = 0: the starting adapter is public)",
    "personal/training.py:_make_dp_optimizer": "torch's seeded noise only when DPConfig.rng == 'seeded'",
    "personal/training.py:train_adapter": "batch order of non-private runs, seeded Poisson sampling only when "
                                          "DPConfig.rng == 'seeded', dropout (DP holds for any gradient computation)",
    "personal/predict.py:ask": "text sampling of an answer (no DP release)",
    "personal/models.py:_tiny": "random initialisation of the tiny test bases",
    "personal/slim/distil.py:distil": "batch order when distilling the public base (no owner data released)",
    "federation/strategy.py:__init__": "the server's cohort sampling (HomebodyStrategy), not a device's noise",
    "federation/canary.py:__init__": "the federated audit's canary and null directions (public probes, no owner data)",
    "personal/audit_hook.py:__init__": "which canaries the white-box audit inserts and samples (an experiment; the "
                                       "run's own noise follows DPConfig.rng)",
}
PRIMITIVES = ("train_adapter", "train_round", "build_update", "add_gaussian_noise", "DPOptimizer", "PrivacyEngine")


def _is_non_private(call: ast.Call) -> bool:
    """Does this `train_adapter(...)` call pass `DPConfig.non_private()` as its DP config?"""
    dp = call.args[4] if len(call.args) > 4 else next((k.value for k in call.keywords if k.arg == "dp"), None)
    return isinstance(dp, ast.Call) and _callee(dp) == "non_private"


def _is_ledger_append(call: ast.Call) -> bool:
    f = call.func
    if not (isinstance(f, ast.Attribute) and f.attr in ("append", "append_verified")):
        return False
    receiver = ast.unparse(f.value).lower()
    return "ledger" in receiver or any(k.arg in ("artefact_sha256", "signer") for k in call.keywords)


def _is_gate_commit(call: ast.Call) -> bool:
    """`gate.commit(profile, unit, ...)` / `commit_non_private(...)`, not a database's `conn.commit()`."""
    return _callee(call) in ("commit", "commit_non_private") and len(call.args) + len(call.keywords) >= 2


def release_calls(source: str, rel: str) -> list[tuple[str, str, bool]]:
    """(primitive, "file:function", private) for every release primitive called in ``source``."""
    out = []
    for owner, call in _calls(ast.parse(source)):
        name, where = _callee(call), f"{rel}:{owner}"
        if name in PRIMITIVES:
            out.append((name, where, not (name == "train_adapter" and _is_non_private(call))))
        elif _is_ledger_append(call):
            out.append(("ledger.append", where, True))
        elif _is_gate_commit(call):
            out.append(("gate.commit", where, True))
    return out


def gate_calls(source: str) -> dict[str, set[str]]:
    """Per function: the gate-like calls it makes (check / commit / its budget helper)."""
    out: dict[str, set[str]] = {}
    for owner, call in _calls(ast.parse(source)):
        name = _callee(call)
        if name in ("check", "check_budget", "admit_round") or _is_gate_commit(call):
            out.setdefault(owner, set()).add("commit" if _is_gate_commit(call) else "check")
    return out


def violations(found: list[tuple[str, str, bool]], gated: dict[str, set[str]]) -> list[str]:
    """Every release primitive called where the allow-list does not expect it, and every DP trainer
    that does not call the gate's check and commit itself."""
    bad = []
    for name, where, private in found:
        if name == "train_adapter" and private:
            if where in DP_EXPERIMENTS:
                continue
            if where not in GATED_DP_TRAINERS:
                bad.append(f"{where}: trains with DP outside the gated release paths")
            elif gated.get(where, set()) != {"check", "commit"}:
                bad.append(f"{where}: trains with DP but does not call the gate's check and commit")
        elif where not in ALLOWED.get(name, {}):
            bad.append(f"{where}: calls {name} (not an allowed release path)")
    return bad


def _scan_library() -> tuple[list[tuple[str, str, bool]], dict[str, set[str]]]:
    found, gated = [], {}
    for top in LIBRARY:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            source = path.read_text(encoding="utf-8")
            found += release_calls(source, rel)
            gated.update({f"{rel}:{fn}": calls for fn, calls in gate_calls(source).items()})
    return found, gated


def test_no_release_path_bypasses_the_gate():
    found, gated = _scan_library()
    bad = violations(found, gated)
    assert not bad, "release path(s) outside the gate; route them through ReleaseGate or add them with a reason:\n" + \
        "\n".join(bad)
    names = {name for name, _, _ in found}
    assert {"train_adapter", "train_round", "build_update", "ledger.append", "gate.commit"} <= names, \
        f"the scan missed known release primitives (found {sorted(names)}): the scan is broken"


def test_every_dp_trainer_is_a_known_gated_path():
    found, gated = _scan_library()
    dp_trainers = {where for name, where, private in found if name == "train_adapter" and private} - set(DP_EXPERIMENTS)
    assert dp_trainers == set(GATED_DP_TRAINERS), dp_trainers
    for where in GATED_DP_TRAINERS:
        assert gated[where] == {"check", "commit"}, f"{where} must check the budget and commit through the gate"
    # The device round is gated too: its noised update is checked before training and committed after.
    assert gated["federation/device.py:train_round"] == {"check", "commit"}


def _functions(tree: ast.AST):
    """(function name, function node) for every def, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node


def _names_rng(details: ast.AST | None, fn: ast.AST) -> bool:
    """Does ``details`` (a dict literal, or a variable filled in ``fn``) carry an "rng" key?"""
    def has_key(d: ast.AST) -> bool:
        return isinstance(d, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "rng" for k in d.keys)

    if details is None:
        return False
    if has_key(details):
        return True
    if isinstance(details, ast.BinOp) and isinstance(details.op, ast.BitOr):  # details | {...}
        return _names_rng(details.left, fn) or _names_rng(details.right, fn)
    if not isinstance(details, ast.Name):
        return False
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                        and target.value.id == details.id and isinstance(target.slice, ast.Constant)
                        and target.slice.value == "rng"):
                    return True
                if isinstance(target, ast.Name) and target.id == details.id and has_key(node.value):
                    return True
    return False


def unnamed_rng_commits(source: str, rel: str) -> list[str]:
    """Every DP ``commit(...)`` in ``source`` whose details do not name the noise's randomness."""
    bad = []
    for name, fn in _functions(ast.parse(source)):
        for call in ast.walk(fn):
            if isinstance(call, ast.Call) and _callee(call) == "commit" and _is_gate_commit(call):
                details = call.args[5] if len(call.args) > 5 else next(
                    (k.value for k in call.keywords if k.arg == "details"), None)
                if not _names_rng(details, fn):
                    bad.append(f"{rel}:{name}:{call.lineno}")
    return sorted(set(bad))


def seeded_generators(source: str, rel: str) -> list[str]:
    """ "file:function" of every reference to a seeded generator constructor in ``source``."""
    out, tree = [], ast.parse(source)
    annotations = set()  # a type hint naming np.random.Generator builds nothing
    for node in ast.walk(tree):
        for hint in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if hint is not None:
                annotations.update(id(n) for n in ast.walk(hint))

    def walk(node, owner):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else owner
            ref = child.attr if isinstance(child, ast.Attribute) else child.id if isinstance(child, ast.Name) else None
            if (ref in SEEDED_NAMES and id(child) not in annotations
                    and not (isinstance(child, ast.Name) and ref in ("Generator", "Random"))):
                out.append(f"{rel}:{owner}")
            walk(child, name)

    walk(tree, "<module>")
    return out


def test_every_dp_commit_names_its_randomness():
    bad = []
    for top in LIBRARY:
        for path in sorted((REPO / top).rglob("*.py")):
            bad += unnamed_rng_commits(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
    assert not bad, f"DP release(s) committed without details['rng'] (os-csprng or seeded): {bad}"


def test_no_seeded_generator_on_a_real_release_path():
    found = set()
    for top in REAL_FLOORS:
        for path in sorted((REPO / top).rglob("*.py")):
            found.update(seeded_generators(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix()))
    new = sorted(found - set(SEEDED_ALLOWED))
    assert not new, f"seeded generator(s) on the real device's floors: {new}; use privacy.randomness (OS CSPRNG)"
    assert "privacy/randomness.py:noise_source" in found, "the scan found nothing: it is broken"


def test_the_scanner_flags_a_bypass():
    sneaky = '''
from opacus import PrivacyEngine
from personal.training import DPConfig, train_adapter
from privacy.ledger import Ledger
from federation.update import build_update


def quick_release(base, examples, labels, cfg, db):
    res = train_adapter(base, examples, labels, cfg, DPConfig(epsilon=1.0))
    Ledger(db).append(profile="p", unit="record", artefact_sha256=res.adapter.sha256(), signer=None)
    return res


def fine(base, examples, labels, cfg, conn):
    conn.commit()
    return train_adapter(base, examples, labels, cfg, DPConfig.non_private())


def noisy_upload(delta, spec):
    engine = PrivacyEngine()
    return build_update(delta, spec, round=1, device_id="d", clip_norm=1.0, sigma=1.0)
'''
    bad = violations(release_calls(sneaky, "personal/sneaky.py"), gate_calls(sneaky))
    assert any("sneaky.py:quick_release: trains with DP outside" in b for b in bad), bad
    assert any("quick_release: calls ledger.append" in b for b in bad), bad
    assert any("noisy_upload: calls PrivacyEngine" in b for b in bad), bad
    assert any("noisy_upload: calls build_update" in b for b in bad), bad
    # A plain sqlite commit is not a release; non-private training is only flagged where not allowed.
    assert not any("gate.commit" in b for b in bad) and any("fine: calls train_adapter" in b for b in bad), bad
    # A known DP path that stops calling the gate is caught as well.
    ungated = "def personalize(v, p, base, cfg, dp):\n    return train_adapter(base, [], [], cfg, dp)\n"
    bad = violations(release_calls(ungated, "personal/personalize.py"), gate_calls(ungated))
    assert bad == ["personal/personalize.py:personalize: trains with DP but does not call the gate's check and commit"]


def test_the_randomness_rules_flag_seeded_noise_and_unnamed_commits():
    sneaky = '''
import numpy as np
from dataclasses import field


class Round:
    rng: object = field(default_factory=np.random.default_rng)


def send(gate, mech, digest, seed, hint: np.random.Generator | None = None) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    gate.commit("p", "user", mech, digest, details={"round": 1})
    details = {"round": 2}
    details["rng"] = "os-csprng"
    gate.commit("p", "user", mech, artefact_sha256=digest, details=details)
    gate.commit_non_private("p", "user", digest, details={"round": 3})
    return rng
'''
    assert seeded_generators(sneaky, "federation/x.py") == ["federation/x.py:<module>", "federation/x.py:send"]
    lines = unnamed_rng_commits(sneaky, "federation/x.py")
    assert lines == ["federation/x.py:send:12"], lines  # the second commit names it; non-private has no noise
