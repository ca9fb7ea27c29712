"""Accountants side by side on the acceptance grid (delta 1e-5): homebody's PLD, PRV and RDP, and an
independent dp_accounting PLD on a finer grid, with the time each took.

    .venv/bin/python -m benchmarks.privacy_accountants

Prints a Markdown table for docs/BENCHMARKS.md (## Privacy).
"""

from __future__ import annotations

import itertools
import os
import platform
import time
from datetime import datetime, timezone

from privacy.accountant import AccountingError, SubsampledGaussian, compute_epsilon

DELTA = 1e-5


def reference(z: float, q: float, t: int) -> float:
    """dp_accounting's PLD object API at 1e-4 (or 2.5e-6 x epsilon, at most 1e-3, for large epsilons)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    def eps(grid: float) -> float:
        dist = pld.from_gaussian_mechanism(standard_deviation=z, sampling_prob=q, value_discretization_interval=grid)
        return dist.self_compose(t).get_epsilon_for_delta(DELTA)

    return eps(min(1e-3, max(1e-4, 2.5e-6 * eps(1e-2))))


def timed(fn):
    t = time.perf_counter()
    try:
        out = fn()
    except AccountingError as exc:
        out = f"refused ({str(exc).split(':')[-1].strip()[:30]})"
    return out, time.perf_counter() - t


def main() -> None:
    compute_epsilon([SubsampledGaussian(1.0, 0.1, 1)], DELTA, "rdp")  # import opacus/torch outside the timings
    rows, worst, totals = [], 0.0, {"pld": 0.0, "prv": 0.0, "rdp": 0.0, "ref": 0.0}
    for z, q, t in itertools.product([0.5, 1, 2, 4], [0.001, 0.01, 0.1], [10, 1000, 10000]):
        mech = [SubsampledGaussian(z, q, t)]
        got = {}
        for name in ("pld", "prv", "rdp"):
            got[name], dt = timed(lambda n=name: compute_epsilon(mech, DELTA, n))
            totals[name] += dt
        got["ref"], dt = timed(lambda: reference(z, q, t))
        totals["ref"] += dt
        rel = (got["pld"] - got["ref"]) / got["ref"]
        worst = max(worst, abs(rel))
        rows.append((z, q, t, got, rel))
    fmt = lambda x: x if isinstance(x, str) else f"{x:.4g}"  # noqa: E731
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"delta {DELTA:g}. Total seconds over the 36 points: PLD {totals['pld']:.1f}, PRV {totals['prv']:.1f}, "
          f"RDP {totals['rdp']:.1f}, reference {totals['ref']:.1f}. Largest |PLD - reference| / reference: {worst:.2e}.")
    print()
    print("| z | q | steps | PLD (homebody) | reference PLD | rel. diff | PRV | RDP |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for z, q, t, g, rel in rows:
        print(f"| {z:g} | {q:g} | {t} | {fmt(g['pld'])} | {fmt(g['ref'])} | {rel:+.1e} | {fmt(g['prv'])} | {fmt(g['rdp'])} |")


if __name__ == "__main__":
    main()
