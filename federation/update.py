"""The wire: what one device sends in one round, how it is built, encoded and checked.

An `Update` is a dict of named float32 numpy arrays (the change of the *shared* adapter's
tensors, already clipped and noised) plus a small `UpdateHeader`. Nothing else ever
leaves a device: no events, no base weights, no personal adapter.

The header deliberately carries no norm measured before the noise and no example count: both
depend on the owner's data and are not protected by the noise, so they stay on the device.

`check_update` is the ONE check used by a device before sending and by the server on
receipt: names, shapes, finite values, and an L2 bound (exactly C before noise; after
noise C plus a high-probability bound on the Gaussian's norm, plus the encoding's error).

The noise and the int8 stochastic rounding draw from the OS CSPRNG (`privacy.randomness`)
unless a caller passes a seeded generator (simulations and tests only).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import numpy as np

from privacy.errors import HomebodyError
from privacy.randomness import NoiseSource, SecureGenerator

AdapterSpec = Mapping[str, tuple[int, ...]]
Arrays = dict[str, np.ndarray]
# A Gaussian vector's norm exceeds sigma*C*(sqrt(d) + t) with probability <= exp(-t^2/2);
# t = 6 makes a false rejection of an honest device a ~1e-8 event.
NOISE_TAIL_T = 6.0
INT8_LEVELS = 127


class UpdateRejected(HomebodyError):
    """An update failed `check_update`; `reason` is one of the REASONS below."""

    REASONS = ("wrong-name", "wrong-shape", "non-finite", "over-norm", "bad-header")

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"update rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UpdateHeader:
    """The small header sent with every update (all values are public)."""

    round: int
    device_id: str
    clip_norm: float
    sigma: float
    encoding: str = "fp32"

    def to_dict(self) -> dict[str, int | float | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "UpdateHeader":
        try:
            return cls(
                round=int(values["round"]),  # type: ignore[arg-type]
                device_id=str(values["device_id"]),
                clip_norm=float(values["clip_norm"]),  # type: ignore[arg-type]
                sigma=float(values["sigma"]),  # type: ignore[arg-type]
                encoding=str(values.get("encoding", "fp32")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected("bad-header", f"header unreadable: {exc!r}") from exc


@dataclass
class Update:
    """Decoded update: float32 arrays (clipped, noised delta of the shared adapter) + header."""

    header: UpdateHeader
    arrays: Arrays

    def norm(self) -> float:
        return l2_norm(self.arrays)


@dataclass
class WireUpdate:
    """An encoded update as it travels: arrays in the wire dtype plus per-tensor int8 scales."""

    header: dict[str, int | float | str]
    arrays: Arrays
    scales: dict[str, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Payload bytes: the arrays' raw bytes plus 4 bytes per scale (header excluded)."""
        return int(sum(a.nbytes for a in self.arrays.values()) + 4 * len(self.scales))

    def sha256(self) -> str:
        """Digest of what is sent (recorded in the device's ledger as the released artefact)."""
        digest = hashlib.sha256()
        for name in sorted(self.arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.arrays[name]).tobytes())
            digest.update(repr(self.scales.get(name)).encode())
        digest.update(repr(sorted(self.header.items())).encode())
        return digest.hexdigest()


def spec_of(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The names and shapes an update must have: those of the shared adapter's tensors."""
    return {name: tuple(np.shape(value)) for name, value in tensors.items()}


def spec_dim(spec: AdapterSpec) -> int:
    """Number of scalars in an update of this spec."""
    return int(sum(math.prod(shape) for shape in spec.values()))


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all arrays taken together (float64 accumulation)."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())))


def delta_of(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray], spec: AdapterSpec) -> Arrays:
    """new - old for the spec's names only (anything else, e.g. a personal head, is left out)."""
    return {name: (np.asarray(new[name], np.float32) - np.asarray(old[name], np.float32)) for name in spec}


def clip(arrays: Mapping[str, np.ndarray], clip_norm: float) -> tuple[Arrays, float]:
    """Scale the whole update so its L2 norm is at most clip_norm; returns (clipped, norm before)."""
    norm = l2_norm(arrays)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (np.asarray(v, np.float32) * np.float32(factor)) for k, v in arrays.items()}, norm


def add_gaussian_noise(arrays: Mapping[str, np.ndarray], std: float, rng: NoiseSource | None = None) -> Arrays:
    """Add N(0, std^2) independently to every coordinate (drawn in float64, stored float32);
    from the OS CSPRNG unless a seeded ``rng`` is given."""
    rng = SecureGenerator() if rng is None else rng
    if std == 0:
        return {k: np.asarray(v, np.float32).copy() for k, v in arrays.items()}
    return {k: (np.asarray(v, np.float64) + rng.normal(0.0, std, size=np.shape(v))).astype(np.float32) for k, v in arrays.items()}


def build_update(
    delta: Mapping[str, np.ndarray],
    spec: AdapterSpec,
    *,
    round: int,
    device_id: str,
    clip_norm: float,
    sigma: float,
    rng: NoiseSource | None = None,
    encoding: str = "fp32",
    observe: Callable[[str, Arrays], None] | None = None,
) -> tuple[Update, float]:
    """Clip the delta to C, check it, add N(0, (sigma*C)^2) (OS CSPRNG unless ``rng`` is seeded), check again.

    Returns the update and the norm before clipping (which stays on the device).
    `observe("clipped", arrays)` lets an on-device auditor see the pre-noise update; it is
    never part of what is sent.
    """
    clipped, raw_norm = clip({name: delta[name] for name in spec}, clip_norm)
    header = UpdateHeader(round, device_id, clip_norm, sigma, encoding)
    check_update(Update(header, clipped), spec, clip_norm, sigma=0.0)
    if observe is not None:
        observe("clipped", {k: v.copy() for k, v in clipped.items()})
    noised = Update(header, add_gaussian_noise(clipped, sigma * clip_norm, rng))
    check_update(noised, spec, clip_norm, sigma=sigma)
    return noised, raw_norm


def encode(update: Update, rng: NoiseSource | None = None) -> WireUpdate:
    """Encode in the header's encoding: fp32, fp16, or int8 with stochastic rounding (its
    uniforms from the OS CSPRNG unless a seeded ``rng`` is given).

    int8: per tensor, scale = max|x| / 127 and q = floor(x/scale + U[0,1)), so that
    E[q * scale] = x (unbiased) and the error per coordinate is below one scale step.
    """
    encoding = update.header.encoding
    header = update.header.to_dict()
    if encoding == "fp32":
        return WireUpdate(header, {k: np.asarray(v, np.float32) for k, v in update.arrays.items()})
    if encoding == "fp16":
        return WireUpdate(header, {k: np.asarray(v, np.float32).astype(np.float16) for k, v in update.arrays.items()})
    if encoding == "int8":
        rng = SecureGenerator() if rng is None else rng
        arrays, scales = {}, {}
        for name, value in update.arrays.items():
            arrays[name], scales[name] = _int8_stochastic(np.asarray(value, np.float64), rng)
        return WireUpdate(header, arrays, scales)
    raise UpdateRejected("bad-header", f"unknown encoding {encoding!r}")


def _int8_stochastic(value: np.ndarray, rng: NoiseSource) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(value))) if value.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        # A non-finite tensor is passed through as NaN scale so the receiver's check rejects it.
        return np.zeros(value.shape, np.int8), (0.0 if peak == 0.0 else float("nan"))
    scale = peak / INT8_LEVELS
    q = np.floor(value / scale + rng.random(value.shape))
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


def decode(wire: WireUpdate) -> Update:
    """Back to float32 arrays; a malformed header raises UpdateRejected('bad-header')."""
    header = UpdateHeader.from_dict(wire.header)
    arrays: Arrays = {}
    for name, value in wire.arrays.items():
        value = np.asarray(value)
        if header.encoding == "int8":
            if value.dtype != np.int8 or name not in wire.scales:
                raise UpdateRejected("bad-header", f"int8 tensor {name!r} without int8 data and a scale")
            arrays[name] = (value.astype(np.float64) * float(wire.scales[name])).astype(np.float32)
        else:
            arrays[name] = value.astype(np.float32)
    return Update(header, arrays)


def norm_bound(spec: AdapterSpec, clip_norm: float, sigma: float, encoding: str = "fp32") -> float:
    """The largest L2 norm an honest update can have (with probability >= 1 - 1e-8).

    sigma = 0 (before noise, or central mode): exactly C (plus float rounding). With noise:
    C + sigma*C*(sqrt(d) + 6). Encoding error on top: fp16 relative 2^-10; int8 at most one
    scale step per coordinate, the scale being at most the largest honest coordinate / 127.
    """
    d = spec_dim(spec)
    bound = clip_norm * (1.0 + sigma * (math.sqrt(d) + NOISE_TAIL_T))
    if encoding == "fp16":
        bound *= 1.0 + 2.0**-10
    elif encoding == "int8":
        peak = clip_norm * (1.0 + sigma * (math.sqrt(2.0 * math.log(2.0 * max(d, 1))) + NOISE_TAIL_T))
        bound += math.sqrt(d) * peak / INT8_LEVELS
    return bound * (1.0 + 1e-5)


def check_update(update: Update, spec: AdapterSpec, clip_norm: float, sigma: float = 0.0) -> None:
    """Raise UpdateRejected unless the update has exactly the spec's names and shapes, finite
    values and an L2 norm within `norm_bound(spec, clip_norm, sigma, encoding)`.

    The caller passes ITS OWN clip_norm and sigma (the server uses its configuration, never
    the values a device claims in its header).
    """
    names, expected = set(update.arrays), set(spec)
    if names != expected:
        extra, missing = sorted(names - expected), sorted(expected - names)
        raise UpdateRejected("wrong-name", f"unexpected tensors {extra[:3]}, missing {missing[:3]}")
    for name, shape in spec.items():
        got = tuple(np.shape(update.arrays[name]))
        if got != tuple(shape):
            raise UpdateRejected("wrong-shape", f"{name}: shape {got}, expected {tuple(shape)}")
    for name, value in update.arrays.items():
        if not np.all(np.isfinite(value)):
            raise UpdateRejected("non-finite", f"{name} holds NaN or infinity")
    norm, bound = update.norm(), norm_bound(spec, clip_norm, sigma, update.header.encoding)
    if norm > bound:
        raise UpdateRejected("over-norm", f"L2 norm {norm:.4g} exceeds the bound {bound:.4g} (C={clip_norm}, sigma={sigma})")
