"""White-box one-run audit maths: score canaries from every step's noisy gradient, then bound epsilon.

Threat model (Steinke, Nasr & Jagielski 2023, white-box setting): the auditor inserts ``m``
gradient canaries, each included in training with probability 1/2, and sees every step's
privatised (clipped, summed, noised) gradient. A canary's score is the sum over steps of that
gradient's alignment with the canary direction (``CanaryScores`` accumulates it). Two readings of
the same scores come out of :func:`whitebox_audit`:

* the Steinke–Nasr–Jagielski lower bound (``privacy.empirical``): guesses "in" for the highest
  scores and "out" for the lowest; a statement that holds at the stated confidence whatever the
  score distribution is;
* a Gaussian-shape estimate (after Agrawal et al. 2026, "Let's Ask Gauss"): the summed
  canary-aligned signal is asymptotically Gaussian, so the in and out scores are modelled as
  N(m_in, s²) and N(m_out, s²) with a common (pooled) s. Their separation mu = (m_in - m_out) / s
  makes the run look mu-GDP, whose epsilon at delta is (Dong, Roth & Su 2019)

      delta(eps) = Phi(-eps/mu + mu/2) - e^eps * Phi(-eps/mu - mu/2).

  A one-sided confidence interval on mu (the usual standard error of a standardised mean
  difference, with a Student-t quantile on the smaller group's degrees of freedom) gives
  ``epsilon_lower``. This rests on the Gaussian shape (a central-limit
  approximation over the steps), so it is an estimate, not a proof; it is far tighter than the
  yes/no guesses when the shape holds. Assumption, stated because the 2026 paper was not at hand in
  full: equal variances in and out (the pooled s); a canary's Bernoulli sampling makes the in
  scores slightly wider, which the pooling turns into a slightly smaller, i.e. conservative, mu.

Pure Python and numpy; scipy (already needed by ``privacy.empirical``'s binomial tails) only for
the Student-t quantile of small groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from privacy.empirical import AuditInputError, AuditResult, audit_from_scores

# Guess counts for white-box scores, fixed before any score is seen: k "in" and k "out" guesses
# at these fractions of m. Measured on simulated DP-SGD scores (m = 10,000, claimed epsilon 4):
# small symmetric fractions beat the black-box defaults (0.05..0.5), which waste guesses where
# the two score distributions overlap.
WHITEBOX_GUESS_FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05)
_MAX_EPSILON = 1e4  # epsilon searches stop here: a run that leaks more than this is "infinite" anyway


def _log_phi_neg(x: float) -> float:
    """log Phi(-x) for any real x, without underflow for large x (asymptotic series past 30)."""
    if x < 30:
        return math.log(0.5 * math.erfc(x / math.sqrt(2)))
    return -x * x / 2 - math.log(x * math.sqrt(2 * math.pi)) + math.log1p(-1 / x**2 + 3 / x**4)


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of a mu-GDP mechanism (Dong, Roth & Su 2019, Corollary 2.13)."""
    if mu < 0 or epsilon < 0:
        raise AuditInputError(f"need mu >= 0 and epsilon >= 0, got {mu!r}, {epsilon!r}")
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    first = math.exp(_log_phi_neg(epsilon / mu - mu / 2))
    second = math.exp(epsilon + _log_phi_neg(epsilon / mu + mu / 2))
    return max(0.0, first - second)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with delta(epsilon) <= ``delta`` for a mu-GDP mechanism (inf for mu = inf)."""
    if not (0 < delta < 1):
        raise AuditInputError(f"delta must be in (0, 1), got {delta!r}")
    if math.isnan(mu) or mu < 0:
        raise AuditInputError(f"mu must be >= 0, got {mu!r}")
    if math.isinf(mu):
        return math.inf
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_delta(mu, hi) > delta:
        lo, hi = hi, hi * 2
        if hi > _MAX_EPSILON:
            return math.inf
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = (lo + hi) / 2
        if gdp_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gdp_mu(epsilon: float, delta: float) -> float:
    """The mu whose mu-GDP curve passes through (epsilon, delta): the inverse of :func:`gdp_epsilon`."""
    if not (0 <= epsilon < math.inf) or not (0 < delta < 1):
        raise AuditInputError(f"need a finite epsilon >= 0 and delta in (0, 1), got {epsilon!r}, {delta!r}")
    lo, hi = 0.0, 1.0
    while gdp_delta(hi, epsilon) < delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        if gdp_delta(mid, epsilon) < delta:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class GaussianShapeEstimate:
    """The in/out score Gaussians, their separation ``mu`` and what it means as (epsilon, delta)."""

    mu: float
    mu_lower: float
    epsilon: float
    epsilon_lower: float  # from mu_lower: holds at ``confidence`` if the Gaussian shape holds
    mean_in: float
    mean_out: float
    std_in: float
    std_out: float
    n_in: int
    n_out: int
    confidence: float
    delta: float

    def to_dict(self) -> dict:
        """Plain dict for JSON (inf as the string "inf", which JSON cannot hold as a number)."""
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def _t_quantile(confidence: float, df: int) -> float:
    """Student-t quantile: with few canaries on one side (say 8 canary clients) the normal quantile
    would overstate the confidence; with thousands the two agree."""
    if df >= 1000:
        return NormalDist().inv_cdf(confidence)
    from scipy import stats

    return float(stats.t.ppf(confidence, df))


def _split(scores: Sequence[float], included: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != inc.shape:
        raise AuditInputError(f"scores and included must be 1-D and of one length, got {s.shape} and {inc.shape}")
    if not np.all(np.isfinite(s)):
        raise AuditInputError("scores must be finite")
    if inc.sum() < 2 or (~inc).sum() < 2:
        raise AuditInputError("need at least 2 included and 2 excluded canaries")
    return s[inc], s[~inc]


def gaussian_shape_estimate(
    scores: Sequence[float], included: Sequence[bool], delta: float, confidence: float = 0.95
) -> GaussianShapeEstimate:
    """Fit N(m_in, s²) / N(m_out, s²) to the scores and read the separation as mu-GDP (module docstring)."""
    if not (0 < confidence < 1):
        raise AuditInputError(f"confidence must be in (0, 1), got {confidence!r}")
    s_in, s_out = _split(scores, included)
    n1, n0 = len(s_in), len(s_out)
    m1, m0 = float(s_in.mean()), float(s_out.mean())
    v1, v0 = float(s_in.var(ddof=1)), float(s_out.var(ddof=1))
    pooled = math.sqrt(((n1 - 1) * v1 + (n0 - 1) * v0) / (n1 + n0 - 2))
    if pooled == 0:  # no noise at all: perfectly separated (or identical) scores
        mu = math.inf if m1 > m0 else 0.0
        mu_low = mu
    else:
        mu = max(0.0, (m1 - m0) / pooled)
        se = math.sqrt(1 / n1 + 1 / n0 + mu * mu / (2 * (n1 + n0 - 2)))
        mu_low = max(0.0, mu - _t_quantile(confidence, min(n1, n0) - 1) * se)
    return GaussianShapeEstimate(
        mu=mu, mu_lower=mu_low, epsilon=gdp_epsilon(mu, delta), epsilon_lower=gdp_epsilon(mu_low, delta),
        mean_in=m1, mean_out=m0, std_in=math.sqrt(v1), std_out=math.sqrt(v0), n_in=n1, n_out=n0,
        confidence=confidence, delta=delta,
    )


def whitebox_candidates(m: int) -> list[tuple[int, int]]:
    """(k, k) guess counts at ``WHITEBOX_GUESS_FRACTIONS`` of ``m`` (at least one guess each way)."""
    ks = sorted({max(1, round(m * f)) for f in WHITEBOX_GUESS_FRACTIONS})
    return [(k, k) for k in ks if 2 * k <= m]


@dataclass(frozen=True)
class WhiteBoxAuditResult:
    """Both readings of one white-box run, next to the epsilon the run claimed."""

    claimed_epsilon: float | None
    snj: AuditResult
    gaussian: GaussianShapeEstimate

    @property
    def snj_fails(self) -> bool:
        """The distribution-free lower bound exceeds the claim."""
        return self.snj.claim_fails(self.claimed_epsilon)

    @property
    def gaussian_fails(self) -> bool:
        """The Gaussian-shape estimate's lower confidence limit exceeds the claim."""
        c = self.claimed_epsilon
        return c is not None and math.isfinite(c) and self.gaussian.epsilon_lower > c

    @property
    def flagged(self) -> bool:
        """Either reading says the run leaks more than it claims."""
        return self.snj_fails or self.gaussian_fails

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"claimed_epsilon": self.claimed_epsilon, "flagged": self.flagged, "snj_fails": self.snj_fails,
                "gaussian_fails": self.gaussian_fails, "snj": self.snj.to_dict(), "gaussian": self.gaussian.to_dict()}


def whitebox_audit(
    scores: Sequence[float],
    included: Sequence[bool],
    delta: float,
    confidence: float = 0.95,
    claimed_epsilon: float | None = None,
    candidates: Sequence[tuple[int, int]] | None = None,
) -> WhiteBoxAuditResult:
    """The SNJ lower bound (white-box guess counts unless given) and the Gaussian-shape estimate."""
    m = len(scores)
    snj = audit_from_scores(scores, included, delta, confidence,
                            candidates if candidates is not None else whitebox_candidates(m))
    return WhiteBoxAuditResult(claimed_epsilon, snj, gaussian_shape_estimate(scores, included, delta, confidence))


class CanaryScores:
    """Running per-canary scores: the sum over steps of each canary's observed alignment.

    ``observe(alignment)`` takes one step's alignments (the privatised gradient, minus what the
    auditor already knows, projected on each canary direction, in units of the canary's norm).
    """

    def __init__(self, m: int) -> None:
        if m < 4:
            raise AuditInputError(f"need at least 4 canaries, got {m}")
        self.total = np.zeros(m)
        self.steps = 0

    def observe(self, alignment: np.ndarray) -> None:
        """Add one step's alignments."""
        a = np.asarray(alignment, dtype=float)
        if a.shape != self.total.shape:
            raise AuditInputError(f"expected {self.total.shape[0]} alignments, got shape {a.shape}")
        self.total += a
        self.steps += 1
