"""Randomness by purpose: DP noise and sampling for a real release come from the OS CSPRNG.

A seeded generator (numpy's PCG64, torch's Mersenne Twister) is fine for a simulation, whose
point is to be reproducible, and useless for privacy: anyone who knows the seed (and the code)
regenerates the noise and subtracts it. So a real release draws every noise value and every
sampling decision from ``os.urandom`` (the kernel's CSPRNG, seeded from hardware entropy and
never from anything a caller passes), and only simulations and tests ask for a seeded
generator, explicitly, by giving a seed.

``SecureGenerator`` is a drop-in for the few ``numpy.random.Generator`` methods the device code
uses (``random``, ``normal``, ``standard_normal``). Its normals are Box-Muller on 53-bit uniforms,
and each one is the sum of four standard draws halved (as opacus' secure mode does), which keeps
the distribution's floating-point tails smooth against the attacks of Mironov (CCS 2012).

Every release names the randomness it used (``rng_kind``): ``"os-csprng"`` or ``"seeded"``.
The ledger record carries it and a real device's gate refuses ``"seeded"``.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence, Union

import numpy as np

OS_CSPRNG = "os-csprng"
SEEDED = "seeded"
RNG_KINDS = (OS_CSPRNG, SEEDED)

Size = Union[int, Sequence[int], None]
_TWO_53 = float(2**53)


class NoiseSource(Protocol):
    """What noise and sampling code may call: a ``SecureGenerator`` or a seeded numpy Generator."""

    def random(self, size: Size = None) -> np.ndarray: ...

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Size = None) -> np.ndarray: ...


def _count(size: Size) -> tuple[tuple[int, ...], int]:
    shape = () if size is None else (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    return shape, int(np.prod(shape, dtype=np.int64)) if shape else 1


def _urandom_u53(count: int) -> np.ndarray:
    """``count`` independent uniform integers in [0, 2**53) from the OS CSPRNG, as float64."""
    if count == 0:
        return np.zeros(0)
    raw = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64)


def secure_uniform(size: Size = None) -> np.ndarray:
    """Uniform floats in [0, 1) on a 2**-53 grid, from the OS CSPRNG (a 0-d array for ``size=None``)."""
    shape, count = _count(size)
    return (_urandom_u53(count) / _TWO_53).reshape(shape)


def secure_standard_normal(size: Size = None) -> np.ndarray:
    """N(0, 1) floats from the OS CSPRNG: (sum of 4 Box-Muller draws) / 2."""
    shape, count = _count(size)
    draws = 4 * count
    pairs = (draws + 1) // 2
    u = _urandom_u53(2 * pairs).reshape(2, pairs)
    radius = np.sqrt(-2.0 * np.log((u[0] + 0.5) / _TWO_53))  # (k + 0.5) / 2**53 lies in (0, 1): log is finite
    angle = (2.0 * np.pi / _TWO_53) * u[1]
    both = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:draws]
    return (both.reshape(4, count).sum(axis=0) / 2.0).reshape(shape)


def secure_normal(size: Size = None, scale: float = 1.0, loc: float = 0.0) -> np.ndarray:
    """N(loc, scale^2) floats from the OS CSPRNG (float64)."""
    if scale == 0:
        shape, _ = _count(size)
        return np.full(shape, float(loc))
    return loc + scale * secure_standard_normal(size)


class SecureGenerator:
    """The OS CSPRNG behind the ``numpy.random.Generator`` methods noise and sampling code calls.

    It holds no state and takes no seed: two instances draw independent values.
    """

    kind = OS_CSPRNG

    def random(self, size: Size = None) -> np.ndarray:
        """Uniform floats in [0, 1)."""
        return secure_uniform(size)

    def standard_normal(self, size: Size = None) -> np.ndarray:
        """N(0, 1) floats."""
        return secure_standard_normal(size)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Size = None) -> np.ndarray:
        """N(loc, scale^2) floats."""
        return secure_normal(size, scale, loc)

    def __repr__(self) -> str:
        return "SecureGenerator(os.urandom)"


def noise_source(seed: int | Sequence[int] | None = None) -> "SecureGenerator | np.random.Generator":
    """The OS CSPRNG when no seed is given (every real release); a seeded numpy Generator only
    when a simulation or a test asks for one with a seed."""
    if seed is None:
        return SecureGenerator()
    return np.random.default_rng(seed)


def rng_kind(source: object) -> str:
    """``"os-csprng"`` for a ``SecureGenerator``, ``"seeded"`` for anything else (conservative:
    a generator we cannot vouch for counts as seeded, which a real device's gate refuses)."""
    return OS_CSPRNG if isinstance(source, SecureGenerator) else SEEDED


__all__ = ["OS_CSPRNG", "SEEDED", "RNG_KINDS", "NoiseSource", "SecureGenerator", "noise_source", "rng_kind",
           "secure_normal", "secure_standard_normal", "secure_uniform"]
