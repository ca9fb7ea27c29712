"""Budget policy and the release gate: every DP release goes ``check -> compute -> commit``.

``check`` verifies the signed chain (refusing a broken or missing one with
:class:`~privacy.ledger.LedgerTampered`), then refuses a release that would cross the
profile+unit's cap *before* any training, with a :class:`BudgetExhausted` that carries what
remains, and writes nothing. ``commit`` verifies, checks again and appends the signed record
inside ONE write transaction (``BEGIN IMMEDIATE``), so concurrent releases cannot both pass a
cap that admits one.

Budget policies are themselves signed ledger entries (kind ``policy``): setting or changing one
needs the device signing key, i.e. the unlocked vault, and every change stays on the chain.

Record-level (``"record"``: one event of the owner, local DP-SGD) and user-level (``"user"``:
the whole device, federated rounds) budgets are accounted and capped separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.accountant import ACCOUNTANTS, DEFAULT_ACCOUNTANT, SubsampledGaussian, compute_epsilon
from privacy.errors import HomebodyError
from privacy.ledger import POLICY, UNITS, Ledger, LedgerError, LedgerRecord, canonical_json
from privacy.randomness import RNG_KINDS, SEEDED

POLICY_MECHANISM = "budget-policy"


class BudgetError(HomebodyError):
    """A budget policy or a release request is malformed."""


class BudgetExhausted(HomebodyError):
    """The release would cross the cap. Nothing was written; ``remaining`` says what is left."""

    def __init__(self, *, profile: str, unit: str, spent: float, cap: float, requested: float,
                 epsilon_after: float, delta: float, window_days: float | None = None):
        self.profile, self.unit, self.delta = profile, unit, delta
        self.spent, self.cap, self.requested, self.epsilon_after = spent, cap, requested, epsilon_after
        self.remaining = max(0.0, cap - spent)
        self.window_days = window_days
        scope = f"in the last {window_days:g} days " if window_days is not None else ""
        super().__init__(
            f"privacy budget exhausted for profile {profile!r} ({unit}-level): spent epsilon={spent:.4g} {scope}"
            f"of cap {cap:g}, {self.remaining:.4g} remains; this release (epsilon={requested:.4g} alone) would bring "
            f"it to {epsilon_after:.4g} at delta={delta:g}. Nothing was recorded."
        )


@dataclass(frozen=True)
class BudgetPolicy:
    """Total epsilon cap at a fixed delta, optionally also a cap per rolling window of days."""

    epsilon_cap: float
    delta: float
    window_days: float | None = None
    window_cap: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon_cap, (int, float)) or not (0 < self.epsilon_cap < math.inf):
            raise BudgetError(f"epsilon cap must be a finite number > 0, got {self.epsilon_cap!r}")
        if not isinstance(self.delta, (int, float)) or not (0 < self.delta < 1):
            raise BudgetError(f"delta must be in (0, 1), got {self.delta!r}")
        if (self.window_days is None) != (self.window_cap is None):
            raise BudgetError("window_days and window_cap go together: give both or neither")
        if self.window_days is not None and not (self.window_days > 0 and 0 < self.window_cap < math.inf):
            raise BudgetError(f"window needs days > 0 and a finite cap > 0, got {self.window_days!r}, {self.window_cap!r}")


# Used when a profile+unit has no policy of its own. epsilon 8 at delta 1e-5 is a common
# upper end for DP-SGD deployments; set a tighter one with `ReleaseGate.set_policy`.
DEFAULT_POLICY = BudgetPolicy(epsilon_cap=8.0, delta=1e-5)


@dataclass(frozen=True)
class BudgetStatus:
    """One profile+unit's budget as the ledger holds it: ``spent`` epsilon (inf once a non-private
    release was recorded), the policy's caps and delta, what the total cap still allows, and how
    many releases were recorded. ``ReleaseGate.status`` makes these; the CLI's table and the SDK read them."""

    profile: str
    unit: str
    spent: float
    cap: float
    remaining: float
    delta: float
    releases: int
    window_days: float | None = None
    window_cap: float | None = None

    @property
    def unbounded(self) -> bool:
        """True once a non-private release made the spent epsilon infinite."""
        return math.isinf(self.spent)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SeededNoiseRefused(BudgetError):
    """A DP release whose noise came from a seeded generator, at a gate that serves a real device."""


def check_rng(rng: object, allow_seeded_noise: bool) -> None:
    """Refuse a DP release that does not name its randomness (``details["rng"]``), or whose noise
    was seeded when seeded noise is not allowed (a real device: only simulations and tests opt in)."""
    if rng not in RNG_KINDS:
        raise BudgetError(f"a DP release must say which randomness drew its noise: details['rng'] must be one of "
                          f"{', '.join(RNG_KINDS)}, got {rng!r}. Nothing was recorded.")
    if rng == SEEDED and not allow_seeded_noise:
        raise SeededNoiseRefused("refused: this release's noise came from a seeded generator, which anyone who knows "
                                 "the seed can subtract; a real device draws noise from the OS CSPRNG (seeded noise "
                                 "is for simulations and tests, which opt in). Nothing was recorded.")


def _check_target(profile: str, unit: str) -> None:
    if not isinstance(profile, str) or not profile:
        raise BudgetError(f"profile must be a non-empty string, got {profile!r}")
    if unit not in UNITS:
        raise BudgetError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")


class ReleaseGate:
    """Checks releases against the signed policy and records them in the signed ledger.

    ``signer`` is the device signing key (``vault.signing_key()``): without it the gate can read
    and check (by profile id, or by name only with the key) but neither commit nor set a policy.
    ``allow_seeded_noise`` (default False, as on every real device): whether ``commit`` accepts a
    release whose ``details["rng"]`` is ``"seeded"``. Only simulations and tests set it.
    """

    def __init__(self, db: sqlite_utils.Database, signer: Ed25519PrivateKey | None = None,
                 accountant: str = DEFAULT_ACCOUNTANT, clock: Callable[[], datetime] = _now,
                 allow_seeded_noise: bool = False):
        if accountant not in ACCOUNTANTS:
            raise BudgetError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
        self.db, self.signer, self.accountant, self._clock = db, signer, accountant, clock
        self.allow_seeded_noise = bool(allow_seeded_noise)
        self.ledger = Ledger(db, signer=signer)  # tables are created on first write: reads never touch the file

    # -- policy ----------------------------------------------------------------------------
    def set_policy(self, profile: str, unit: str, policy: BudgetPolicy) -> LedgerRecord | None:
        """Set (or change) the policy of one profile+unit as a signed ledger entry.

        Needs the device key; returns the new entry, or None when that policy is already in force.
        """
        _check_target(profile, unit)
        if not isinstance(policy, BudgetPolicy):
            raise BudgetError(f"policy must be a BudgetPolicy, got {type(policy).__name__}")
        if self.signer is None:
            raise BudgetError("changing a budget policy needs the device key: unlock the vault with its passphrase")
        params = asdict(policy)
        with self.ledger.transaction():
            self.ledger.check_or_raise()
            if self.policy(profile, unit) == policy and self.ledger.latest_policy(profile, unit) is not None:
                return None
            return self.ledger.append_verified(
                time=self._clock().isoformat(), profile=profile, unit=unit, mechanism=POLICY_MECHANISM,
                params=params, accountant="", delta=policy.delta, epsilon=0.0,
                artefact_sha256=hashlib.sha256(canonical_json(params)).hexdigest(), details={}, signer=self.signer,
                kind=POLICY,
            )

    def policy(self, profile: str, unit: str) -> BudgetPolicy:
        """The profile+unit's newest signed policy, or :data:`DEFAULT_POLICY`."""
        _check_target(profile, unit)
        rec = self.ledger.latest_policy(profile, unit)
        if rec is None:
            return DEFAULT_POLICY
        p = rec.params
        try:
            return BudgetPolicy(p["epsilon_cap"], p["delta"], p.get("window_days"), p.get("window_cap"))
        except (KeyError, TypeError) as exc:
            raise BudgetError(f"{rec.label()}: unreadable policy ({exc})") from None

    # -- accounting ------------------------------------------------------------------------
    def _releases(self, profile: str, unit: str, since: datetime | None = None) -> list[SubsampledGaussian | None]:
        recs = self.ledger.records(profile, unit)
        if since is not None:
            recs = [r for r in recs if datetime.fromisoformat(r.time) >= since]
        return [r.release() for r in recs]

    def _epsilon(self, releases: list[SubsampledGaussian | None], delta: float) -> float:
        if any(r is None for r in releases):
            return math.inf
        return compute_epsilon(releases, delta, self.accountant)

    def spent(self, profile: str, unit: str) -> float:
        """Epsilon of all recorded releases of this profile+unit, at the policy's delta."""
        return self._epsilon(self._releases(profile, unit), self.policy(profile, unit).delta)

    def status(self, profile: str) -> tuple[BudgetStatus, ...]:
        """The profile's budget per unit (in ``UNITS`` order): spent, caps, remaining, releases."""
        out = []
        for unit in UNITS:
            pol = self.policy(profile, unit)
            releases = self._releases(profile, unit)
            spent = self._epsilon(releases, pol.delta)
            out.append(BudgetStatus(profile, unit, spent, pol.epsilon_cap, max(0.0, pol.epsilon_cap - spent), pol.delta,
                                    len(releases), pol.window_days, pol.window_cap))
        return tuple(out)

    def remaining(self, profile: str, unit: str) -> float:
        """What the total cap still allows (0 when spent); the window cap may allow less now."""
        return max(0.0, self.policy(profile, unit).epsilon_cap - self.spent(profile, unit))

    def check(self, profile: str, unit: str, mech: SubsampledGaussian) -> float:
        """Epsilon after this release; raise :class:`BudgetExhausted` if it crosses a cap, and
        :class:`~privacy.ledger.LedgerTampered` if the chain is broken or missing. Writes nothing."""
        _check_target(profile, unit)
        if not isinstance(mech, SubsampledGaussian):
            raise BudgetError(f"mech must be a SubsampledGaussian, got {type(mech).__name__}")
        self.ledger.check_or_raise()
        return self._check_verified(profile, unit, mech)

    def _check_verified(self, profile: str, unit: str, mech: SubsampledGaussian) -> float:
        """The cap check proper, on a chain the caller has just verified."""
        pol = self.policy(profile, unit)
        past = self._releases(profile, unit)
        after = self._epsilon(past + [mech], pol.delta)
        if after > pol.epsilon_cap:
            raise BudgetExhausted(profile=profile, unit=unit, spent=self._epsilon(past, pol.delta), cap=pol.epsilon_cap,
                                  requested=self._epsilon([mech], pol.delta), epsilon_after=after, delta=pol.delta)
        if pol.window_days is not None:
            recent = self._releases(profile, unit, since=self._clock() - timedelta(days=pol.window_days))
            w_after = self._epsilon(recent + [mech], pol.delta)
            if w_after > pol.window_cap:
                raise BudgetExhausted(profile=profile, unit=unit, spent=self._epsilon(recent, pol.delta),
                                      cap=pol.window_cap, requested=self._epsilon([mech], pol.delta),
                                      epsilon_after=w_after, delta=pol.delta, window_days=pol.window_days)
        return after

    # -- recording -------------------------------------------------------------------------
    def _need_signer(self) -> Ed25519PrivateKey:
        if self.signer is None:
            raise LedgerError("recording a release needs the device signing key (unlock the vault with its passphrase)")
        return self.signer

    def commit(self, profile: str, unit: str, mech: SubsampledGaussian, artefact_sha256: str,
               mechanism: str = "dp-sgd", details: dict | None = None) -> LedgerRecord:
        """Verify the chain, re-check the cap and append a signed record, all in one write transaction.

        On BudgetExhausted (another release landed meanwhile), nothing is written: discard the artefact.
        ``details["rng"]`` names the noise's randomness (``privacy.randomness``): required, and
        ``"seeded"`` is refused (:class:`SeededNoiseRefused`) unless ``allow_seeded_noise``.
        """
        _check_target(profile, unit)
        check_rng((details or {}).get("rng"), self.allow_seeded_noise)
        if mechanism == "non-private":
            raise BudgetError("use commit_non_private for releases without noise")
        if not isinstance(mech, SubsampledGaussian):
            raise BudgetError(f"mech must be a SubsampledGaussian, got {type(mech).__name__}")
        signer = self._need_signer()
        with self.ledger.transaction():
            self.ledger.check_or_raise()
            after = self._check_verified(profile, unit, mech)
            return self.ledger.append_verified(
                time=self._clock().isoformat(), profile=profile, unit=unit, mechanism=mechanism,
                params=mech.params(), accountant=self.accountant, delta=self.policy(profile, unit).delta,
                epsilon=after, artefact_sha256=artefact_sha256, details=details, signer=signer,
            )

    def commit_non_private(self, profile: str, unit: str, artefact_sha256: str,
                           details: dict | None = None) -> LedgerRecord:
        """Record a release made without DP (comparison runs) honestly: epsilon = inf from now on.

        Not capped (it is an explicit opt-out); every later ``check`` on this profile+unit fails.
        """
        _check_target(profile, unit)
        signer = self._need_signer()
        with self.ledger.transaction():
            self.ledger.check_or_raise()
            return self.ledger.append_verified(
                time=self._clock().isoformat(), profile=profile, unit=unit, mechanism="non-private", params={},
                accountant=self.accountant, delta=self.policy(profile, unit).delta, epsilon=math.inf,
                artefact_sha256=artefact_sha256, details=details, signer=signer,
            )


__all__ = [
    "BudgetError", "BudgetExhausted", "BudgetPolicy", "BudgetStatus", "DEFAULT_POLICY", "LedgerError", "ReleaseGate",
    "SeededNoiseRefused", "check_rng",
]
