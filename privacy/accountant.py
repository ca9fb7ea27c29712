"""Privacy accountants: one interface over dp-accounting PLD (default), opacus PRV and opacus RDP.

A release is a :class:`SubsampledGaussian`: ``steps`` applications of the Gaussian mechanism
(noise multiplier ``z``, sensitivity 1) to a Poisson subsample taken with probability ``q``.
One local DP-SGD run is one release; a run of federated rounds a device took part in is one
release at the user level. :func:`compute_epsilon` composes any mix of such releases.

All three accountants use the add-or-remove-one neighbouring relation, like opacus.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from privacy.errors import HomebodyError

ACCOUNTANTS: tuple[str, ...] = ("pld", "prv", "rdp")
DEFAULT_ACCOUNTANT = "pld"

# PLD grid: 1e-3 x a cheap RDP bound / sqrt(total steps), kept within [1e-4, 1e-2]. The
# pessimistic rounding error grows with the number of compositions, hence the sqrt; measured on
# the acceptance grid the result stays within 3e-4 (relative) of a much finer grid and is still
# an upper estimate, while large epsilons cost 0.1 s instead of 10 s.
PLD_MIN_DISCRETIZATION = 1e-4
PLD_MAX_DISCRETIZATION = 1e-2
PLD_RELATIVE_DISCRETIZATION = 1e-3
# opacus' default orders stop at 63; higher orders tighten the bound for small epsilons.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1.01, 1.02, 1.05] + [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 128, 160, 200, 256, 384, 512, 1024]
)
# Searches give up beyond these: a budget that needs more is not a useful budget.
MAX_NOISE_MULTIPLIER = 1e4
MAX_STEPS = 10**8
# opacus' PRV discretisation blows up (minutes, then inf) for very large epsilons.
PRV_MAX_EPSILON = 100.0


class AccountingError(HomebodyError):
    """Bad accountant input (unknown accountant, delta out of range, impossible target...)."""


@dataclass(frozen=True)
class SubsampledGaussian:
    """``steps`` Poisson-subsampled Gaussian steps with noise multiplier ``noise_multiplier``.

    ``noise_multiplier == 0`` means no noise at all: such a release has epsilon = inf.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        z, q, t = self.noise_multiplier, self.sample_rate, self.steps
        if not isinstance(z, (int, float)) or math.isnan(z) or z < 0 or math.isinf(z):
            raise AccountingError(f"noise multiplier must be a finite number >= 0, got {z!r}")
        if not isinstance(q, (int, float)) or not (0 < q <= 1):
            raise AccountingError(f"sample rate must be in (0, 1], got {q!r}")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise AccountingError(f"steps must be an integer >= 0, got {t!r}")
        object.__setattr__(self, "noise_multiplier", float(z))
        object.__setattr__(self, "sample_rate", float(q))

    @property
    def private(self) -> bool:
        """False when the noise is switched off (epsilon = inf)."""
        return self.noise_multiplier > 0 or self.steps == 0

    def params(self) -> dict:
        """The parameters as a plain dict (what the ledger stores)."""
        return asdict(self)


def _check_accountant(accountant: str) -> str:
    name = accountant.lower() if isinstance(accountant, str) else accountant
    if name not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
    return name


def _check_delta(delta: float) -> None:
    if not isinstance(delta, (int, float)) or not (0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")


def _merge(releases: Sequence[SubsampledGaussian]) -> list[tuple[float, float, int]]:
    """Group releases with the same (z, q) by summing their steps; drop empty ones.

    Composition is commutative, so this changes nothing but the cost (a federated device
    taking part in 100 identical rounds is one self-composition, not 100).
    """
    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        if not isinstance(r, SubsampledGaussian):
            raise AccountingError(f"expected SubsampledGaussian releases, got {type(r).__name__}")
        if r.steps:
            key = (r.noise_multiplier, r.sample_rate)
            steps[key] = steps.get(key, 0) + r.steps
    return [(z, q, t) for (z, q), t in steps.items()]


def _rough_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    """A cheap upper bound (dp-accounting RDP, no torch import) to size the PLD grid."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    # A few orders: enough for a bound, 20x cheaper than a full list.
    acc = rdp_privacy_accountant.RdpAccountant(orders=[1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256])
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "failed to converge ... excluding this order": the bound stays valid
    try:
        for z, q, t in merged:
            acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t)
        return float(acc.get_epsilon(delta))
    finally:
        absl.setLevel(level)


def _pld_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t
        )
        for z, q, t in merged
    ]
    total_steps = sum(t for _, _, t in merged)
    grid = PLD_RELATIVE_DISCRETIZATION * _rough_epsilon(merged, delta) / math.sqrt(total_steps)
    grid = min(PLD_MAX_DISCRETIZATION, max(PLD_MIN_DISCRETIZATION, grid))
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=grid)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


def _prv_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    rough = _rough_epsilon(merged, delta)
    if rough > PRV_MAX_EPSILON:
        raise ValueError(f"epsilon is about {rough:.4g} (RDP): opacus PRV is unreliable above {PRV_MAX_EPSILON:g}, use pld")
    acc = PRVAccountant()
    acc.history = list(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # its internal RDP domain estimate
        eps = float(acc.get_epsilon(delta))
    if not math.isfinite(eps):
        raise ValueError("opacus PRV returned a non-finite epsilon, use pld")
    return eps


def _rdp_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(merged)
    with warnings.catch_warnings():
        # "optimal order is the smallest/largest alpha": the bound stays valid, only looser.
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta, alphas=list(RDP_ORDERS)))


_BACKENDS: dict[str, Callable[[list[tuple[float, float, int]], float], float]] = {
    "pld": _pld_epsilon,
    "prv": _prv_epsilon,
    "rdp": _rdp_epsilon,
}


def compute_epsilon(releases: Sequence[SubsampledGaussian], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Epsilon at ``delta`` of all ``releases`` composed (0 for none, inf if any has no noise)."""
    name = _check_accountant(accountant)
    _check_delta(delta)
    merged = _merge(releases)
    if not merged:
        return 0.0
    if any(z == 0 for z, _, _ in merged):
        return math.inf
    try:
        eps = _cached_epsilon(name, tuple(sorted(merged)), float(delta))
    except (ValueError, ArithmeticError, RuntimeError) as exc:
        raise AccountingError(f"the {name} accountant failed on {merged} at delta={delta}: {exc}") from exc
    return max(0.0, eps)


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(name: str, merged: tuple[tuple[float, float, int], ...], delta: float) -> float:
    # A pure function of the merged releases: the devices of one federated run share the same few
    # histories, and an RDP evaluation costs up to ~1 s on 2 cores, so each is computed once.
    return _BACKENDS[name](list(merged), delta)


def _check_epsilon(epsilon: float) -> None:
    if not isinstance(epsilon, (int, float)) or not (0 < epsilon < math.inf):
        raise AccountingError(f"target epsilon must be a finite number > 0, got {epsilon!r}")


def noise_for_epsilon(
    epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    prior: Sequence[SubsampledGaussian] = (),
) -> float:
    """The smallest noise multiplier (to 0.1 %) whose release, after ``prior``, keeps epsilon <= target.

    The answer errs on the safe side: the returned multiplier always meets the target.
    """
    name = _check_accountant(accountant)
    _check_delta(delta)
    _check_epsilon(epsilon)
    SubsampledGaussian(1.0, sample_rate, steps)  # validates q and steps
    if steps == 0:
        raise AccountingError("steps must be >= 1 to choose a noise multiplier")
    prior = tuple(prior)
    spent = compute_epsilon(prior, delta, name)
    if spent >= epsilon:
        raise AccountingError(f"prior releases already spend epsilon={spent:.4g} >= target {epsilon:g}: no noise is enough")

    def eps(z: float) -> float:
        return compute_epsilon(prior + (SubsampledGaussian(z, sample_rate, steps),), delta, name)

    hi = _rough_noise_bracket(epsilon, sample_rate, steps, delta, prior)
    while eps(hi) > epsilon:
        hi *= 2
        if hi > MAX_NOISE_MULTIPLIER:
            raise AccountingError(f"epsilon {epsilon:g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}")
    lo = hi * 0.8
    while eps(lo) <= epsilon:
        hi, lo = lo, lo / 2
        if lo < 1e-6:
            return hi
    # eps(lo) > target >= eps(hi): Brent's method needs ~5 evaluations where bisection needs ~10.
    from scipy.optimize import brentq

    tol = 5e-4 * hi
    root = brentq(lambda z: eps(z) - epsilon, lo, hi, xtol=tol)
    safe = min(hi, root + tol)
    return safe if eps(safe) <= epsilon else hi


def _rough_noise_bracket(epsilon: float, q: float, steps: int, delta: float, prior: tuple) -> float:
    """A noise multiplier that meets the target under the cheap RDP bound (so under PLD/PRV/RDP too, roughly)."""
    merged_prior = _merge(prior)
    if any(z == 0 for z, _, _ in merged_prior):
        return MAX_NOISE_MULTIPLIER

    def rough(z: float) -> float:
        return _rough_epsilon(merged_prior + [(z, q, steps)], delta)

    hi = 1.0
    while rough(hi) > epsilon and hi < MAX_NOISE_MULTIPLIER:
        hi *= 2
    lo = hi / 2
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if rough(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def max_steps_for_epsilon(
    epsilon: float,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    prior: Sequence[SubsampledGaussian] = (),
) -> int:
    """The largest step count whose release, after ``prior``, keeps epsilon <= target (0 if none fits).

    Capped at ``MAX_STEPS``.
    """
    name = _check_accountant(accountant)
    _check_delta(delta)
    _check_epsilon(epsilon)
    SubsampledGaussian(noise_multiplier, sample_rate, 0)  # validates z and q
    prior = tuple(prior)

    def fits(t: int) -> bool:
        return compute_epsilon(prior + (SubsampledGaussian(noise_multiplier, sample_rate, t),), delta, name) <= epsilon

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_STEPS:
            return MAX_STEPS if fits(MAX_STEPS) else _bisect_steps(fits, lo, MAX_STEPS)
    return _bisect_steps(fits, lo, hi)


def _bisect_steps(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest t in [lo, hi) with fits(t), given fits(lo) and not fits(hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
