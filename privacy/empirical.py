"""One-run privacy auditing maths (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run").

Setup: ``m`` canaries, each included in training independently with probability 1/2. After one
training run the auditor scores every canary (higher = "looks included"), guesses "in" for the
``k_pos`` highest scores, "out" for the ``k_neg`` lowest, and abstains on the rest. With ``r``
guesses of which ``v`` are right, their main theorem bounds, for an (epsilon, delta)-DP training
algorithm, the chance of ``v`` or more right guesses:

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta * max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i,
    with q = e^eps / (1 + e^eps).

That is the p-value of the hypothesis "the run was epsilon-DP"; the empirical lower bound at
confidence ``c`` is the largest epsilon this rejects at level ``1 - c``. When several
(k_pos, k_neg) choices are tried on the same scores, the level is split between them
(Bonferroni), so the reported maximum keeps its confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from privacy.errors import HomebodyError


class AuditInputError(HomebodyError):
    """Inconsistent audit counts, scores or confidence."""


@dataclass(frozen=True)
class AuditResult:
    """One audit's outcome: ``epsilon_lower`` holds with probability >= ``confidence``."""

    canaries: int
    guesses: int
    correct: int
    k_pos: int
    k_neg: int
    epsilon_lower: float
    confidence: float
    delta: float
    candidates_tried: int

    def claim_fails(self, claimed_epsilon: float | None) -> bool:
        """True when the measured lower bound exceeds a claimed epsilon (None/inf: no claim)."""
        return claimed_epsilon is not None and math.isfinite(claimed_epsilon) and self.epsilon_lower > claimed_epsilon

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def _check_counts(m: int, r: int, v: int, delta: float) -> None:
    if not (0 <= v <= r <= m):
        raise AuditInputError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if not (0 <= delta < 1):
        raise AuditInputError(f"delta must be in [0, 1), got {delta!r}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Probability bound of >= v right guesses out of r if training was (epsilon, delta)-DP."""
    _check_counts(m, r, v, delta)
    if epsilon < 0:
        raise AuditInputError(f"epsilon must be >= 0, got {epsilon!r}")
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    slack = 0.0
    if delta > 0 and v > 0:
        below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
        slack = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * slack)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The largest epsilon that ``v`` right guesses out of ``r`` reject at level ``1 - confidence``."""
    _check_counts(m, r, v, delta)
    if not (0 < confidence < 1):
        raise AuditInputError(f"confidence must be in (0, 1), got {confidence!r}")
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p(lo) < level <= p(hi); p grows with epsilon
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
        if hi > 512:
            return lo
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def default_candidates(m: int) -> list[tuple[int, int]]:
    """A few (k_pos, k_neg) guess counts fixed before looking at any score."""
    ks = sorted({max(1, round(m * f)) for f in (0.05, 0.1, 0.2, 0.3, 0.5)})
    return [(k, k) for k in ks if 2 * k <= m] + [(k, 0) for k in ks if k <= m]


def audit_from_scores(
    scores: Sequence[float],
    included: Sequence[bool],
    delta: float = 0.0,
    confidence: float = 0.95,
    candidates: Sequence[tuple[int, int]] | None = None,
) -> AuditResult:
    """Guess membership from ``scores`` (higher = included) and return the best Bonferroni-corrected bound."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != inc.shape or s.size == 0:
        raise AuditInputError(f"scores and included must be 1-D and of one length, got {s.shape} and {inc.shape}")
    if not np.all(np.isfinite(s)):
        raise AuditInputError("scores must be finite (a NaN loss means training diverged)")
    m = int(s.size)
    cands = list(candidates) if candidates is not None else default_candidates(m)
    if not cands or any(kp < 0 or kn < 0 or kp + kn > m or kp + kn == 0 for kp, kn in cands):
        raise AuditInputError(f"each (k_pos, k_neg) needs 0 < k_pos + k_neg <= {m}, got {cands}")
    # Random tie-break (fixed seed) so that equal scores do not favour the canaries' order.
    order = np.lexsort((np.random.default_rng(0).random(m), -s))  # highest score first
    per_test = 1.0 - (1.0 - confidence) / len(cands)
    best: AuditResult | None = None
    for kp, kn in cands:
        v = int(inc[order[:kp]].sum() + (~inc[order[m - kn:]]).sum()) if kn else int(inc[order[:kp]].sum())
        eps = epsilon_lower_bound(m, kp + kn, v, delta, per_test)
        res = AuditResult(m, kp + kn, v, kp, kn, eps, confidence, delta, len(cands))
        if best is None or eps > best.epsilon_lower:
            best = res
    return best
