"""Audit reports: one device's ledger (releases, spent/remaining per unit, epsilon over time) and a
population of devices (epsilon distribution, worst device, rounds per device).

Each report is a JSON-able dict plus one self-contained HTML file (the plots are PNGs embedded
as base64, no external resources), so an auditor can open it anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from privacy.budget import ReleaseGate
from privacy.errors import HomebodyError
from privacy.ledger import UNITS, Ledger


class ReportError(HomebodyError):
    """A report cannot be built from what was given."""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f0f3f7}
td.l,th.l{text-align:left}.ok{color:#17803d;font-weight:600}.bad{color:#b42318;font-weight:600}
code{font-size:.85em}img{max-width:100%;border:1px solid #ddd}
"""


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def _json_num(x: float | None) -> float | str | None:
    return "inf" if isinstance(x, float) and math.isinf(x) else x


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _table(headers: list[str], rows: list[list[str]], left: int = 1, table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    # The script records whether each embedded plot decoded, so a headless browser's DOM dump shows it.
    script = (
        "<script>window.addEventListener('load',()=>{document.querySelectorAll('img.plot').forEach(i=>"
        "{i.dataset.rendered=String(i.complete&&i.naturalWidth>0);i.dataset.width=String(i.naturalWidth)})})</script>"
    )
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}{script}</body></html>"
    )


def _write(path: str | Path | None, text: str) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------- one device
def ledger_report(db: sqlite_utils.Database, profile: str | None = None, accountant: str = "pld",
                  signer=None, names: list[str] | None = None) -> dict:
    """A JSON-able summary of the ledger: verification, per-profile per-unit budgets, every release.

    The ledger names profiles by id; with the device ``signer`` (unlocked vault) a ``profile`` may be
    given by name, and the owner's ``names`` are shown instead of their ids.
    """
    ledger = Ledger(db, signer=signer)
    gate = ReleaseGate(db, signer=signer, accountant=accountant)
    problems = ledger.verify()
    shown = ledger.names(list(names or []) + ([profile] if profile is not None else []))
    records = ledger.records(profile=profile)
    profiles = [ledger.profile_key(profile)] if profile is not None else ledger.profiles()
    budgets = []
    for p in profiles:
        for unit in UNITS:
            recs = [r for r in records if r.profile == p and r.unit == unit]
            pol = gate.policy(p, unit)
            spent = gate.spent(p, unit)
            budgets.append(
                {
                    "profile": shown.get(p, p), "profile_id": p, "unit": unit, "releases": len(recs),
                    "spent": _json_num(spent),
                    "cap": pol.epsilon_cap, "delta": pol.delta, "remaining": max(0.0, pol.epsilon_cap - spent),
                    "window_days": pol.window_days, "window_cap": pol.window_cap,
                }
            )
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accountant": accountant,
        "profile": profile,
        "verified": not problems,
        "problems": problems,
        "budgets": budgets,
        "releases": [
            {**{k: v for k, v in r.to_dict().items() if k not in ("v", "signature")}, "epsilon": _json_num(r.epsilon),
             "profile": shown.get(r.profile, r.profile), "profile_id": r.profile}
            for r in records
        ],
    }


def _epsilon_plot(report: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    series: dict[tuple[str, str], list[tuple[datetime, float]]] = {}
    for r in report["releases"]:
        eps = math.inf if r["epsilon"] == "inf" else float(r["epsilon"])
        series.setdefault((r["profile"], r["unit"]), []).append((datetime.fromisoformat(r["time"]), eps))
    finite = [e for pts in series.values() for _, e in pts if math.isfinite(e)]
    top = max(finite + [b["cap"] for b in report["budgets"]] + [1.0])
    for (prof, unit), pts in sorted(series.items()):
        xs, ys = [t for t, _ in pts], [e if math.isfinite(e) else top * 1.1 for _, e in pts]
        (line,) = ax.step(xs, ys, where="post", marker="o", label=f"{prof} · {unit}-level")
        caps = [b["cap"] for b in report["budgets"] if b["profile"] == prof and b["unit"] == unit]
        if caps:
            ax.axhline(caps[0], color=line.get_color(), linestyle="--", linewidth=1)
    if not series:
        ax.text(0.5, 0.5, "no releases recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("epsilon after release")
    ax.set_title("Privacy spent over time (dashed: cap; points above all caps: non-private)")
    if series:
        ax.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def render_ledger_html(report: dict) -> str:
    """The device report as one self-contained HTML page."""
    status = (
        '<p class="ok" id="verify-status">Ledger verified: every record is signed by the device key and chained.</p>'
        if report["verified"]
        else '<p class="bad" id="verify-status">Ledger verification FAILED:</p><ul>'
        + "".join(f"<li>{html.escape(p)}</li>" for p in report["problems"]) + "</ul>"
    )
    budgets = _table(
        ["profile", "unit", "releases", "spent ε", "cap ε", "remaining ε", "δ", "window"],
        [
            [b["profile"], b["unit"], b["releases"], _num(_from_json(b["spent"])), _num(b["cap"]), _num(b["remaining"]),
             _num(b["delta"], 2), f"{_num(b['window_cap'])} per {_num(b['window_days'])} d" if b["window_days"] else "—"]
            for b in report["budgets"]
        ],
        left=2, table_id="budgets",
    )
    releases = _table(
        ["seq", "time (UTC)", "profile", "unit", "mechanism", "noise z", "sample rate q", "steps", "accountant", "δ",
         "ε after", "artefact SHA-256"],
        [
            [r["seq"], r["time"][:19].replace("T", " "), r["profile"], r["unit"], r["mechanism"], _num(r["params"].get("noise_multiplier")),
             _num(r["params"].get("sample_rate")), r["params"].get("steps", "—"), r["accountant"], _num(r["delta"], 2),
             _num(_from_json(r["epsilon"])), r["artefact_sha256"][:16] + "…"]
            for r in report["releases"]
        ],
        left=5, table_id="releases",
    )
    scope = f"profile {html.escape(report['profile'])}" if report["profile"] else "all profiles"
    body = (
        f"<h1>homebody privacy report — {scope}</h1><p>Generated {report['generated']}; "
        f"accountant {html.escape(report['accountant'])}.</p>{status}"
        f"<h2>Budgets (record-level and user-level are separate)</h2>{budgets}"
        f'<h2>Epsilon over time</h2><img class="plot" id="epsilon-plot" alt="epsilon over time" '
        f'src="data:image/png;base64,{_epsilon_plot(report)}">'
        f"<h2>Releases ({len(report['releases'])})</h2>{releases}"
    )
    return _page("homebody privacy report", body)


def _from_json(x: float | str | None) -> float | None:
    return math.inf if x == "inf" else x


def write_ledger_report(db: sqlite_utils.Database, profile: str | None = None, html_path: str | Path | None = None,
                        json_path: str | Path | None = None, accountant: str = "pld", signer=None,
                        names: list[str] | None = None) -> dict:
    """Build the device report and write it as HTML and/or JSON; returns the report dict."""
    report = ledger_report(db, profile, accountant, signer=signer, names=names)
    _write(json_path, json.dumps(report, indent=2))
    if html_path is not None:
        _write(html_path, render_ledger_html(report))
    return report


# ---------------------------------------------------------------------------------- population
@dataclass(frozen=True)
class DeviceSummary:
    """One simulated device's privacy outcome (user-level unless stated)."""

    device_id: str
    epsilon: float
    delta: float
    rounds: int
    unit: str = "user"
    cap: float | None = None

    @classmethod
    def from_ledger(cls, db: sqlite_utils.Database, device_id: str, profile: str, unit: str = "user",
                    accountant: str = "pld", signer=None) -> DeviceSummary:
        """Summarise one profile+unit of a device's ledger (rounds = number of releases recorded).

        ``profile`` is a name (then ``signer``, the device key, maps it to its ledger id) or an id.
        """
        gate = ReleaseGate(db, signer=signer, accountant=accountant)
        pol = gate.policy(profile, unit)
        return cls(device_id, gate.spent(profile, unit), pol.delta, len(gate.ledger.records(profile, unit)), unit,
                   pol.epsilon_cap)


def _population_plots(devices: list[DeviceSummary]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    eps = [d.epsilon for d in devices if math.isfinite(d.epsilon)]
    a.hist(eps or [0.0], bins=min(30, max(5, len(eps) // 3)), color="#3b6ea5")
    a.set_xlabel("epsilon per device")
    a.set_ylabel("devices")
    a.set_title("Distribution of epsilon across devices")
    caps = {d.cap for d in devices if d.cap is not None}
    for c in caps:
        a.axvline(c, color="#b42318", linestyle="--", linewidth=1)
    rounds = [d.rounds for d in devices]
    b.hist(rounds, bins=min(30, max(5, len(set(rounds)))), color="#5b8c5a")
    b.set_xlabel("rounds taken part in")
    b.set_title("Rounds per device")
    fig.tight_layout()
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _empirical_html(est: dict | None) -> str:
    """The canary clients' estimates next to the claim (empty without canaries)."""
    if not est:
        return ""
    rows = [[name, str(est[key]["epsilon"]), str(est[key]["epsilon_lower"]), f"{est[key]['confidence']:.0%}"]
            for name, key in (("all iterates", "all_iterates"), ("final model", "final_model"))]
    verdict = "the estimate exceeds the claim" if est["flagged"] else "consistent with the claim"
    return (f"<h2>Empirical estimate ({est['canaries']} canary clients, {est['rounds']} rounds)</h2>"
            f"<p>claimed ε={_num(est['claimed_epsilon'])}: <b id=\"canary-verdict\">{verdict}</b></p>"
            + _table(["threat model", "estimated ε", "lower limit", "confidence"], rows, table_id="canary-estimate"))


def population_report(devices: list[DeviceSummary], html_path: str | Path | None = None,
                      json_path: str | Path | None = None, title: str = "homebody population privacy report",
                      empirical: dict | None = None) -> dict:
    """Population view for a simulation run: epsilon distribution, worst device, rounds per device.

    ``empirical``: a canary-client estimate (``federation.canary.CanaryEstimate.to_dict()``), shown
    next to the accounted epsilon when the run was audited with canaries.
    """
    if not devices:
        raise ReportError("a population report needs at least one device")
    finite = sorted(d.epsilon for d in devices if math.isfinite(d.epsilon))
    worst = max(devices, key=lambda d: (d.epsilon, d.rounds))

    def q(p: float) -> float | None:
        return finite[min(len(finite) - 1, int(p * len(finite)))] if finite else None

    report = {
        "title": title,
        "devices": len(devices),
        "non_private_devices": sum(1 for d in devices if not math.isfinite(d.epsilon)),
        "epsilon": {"min": finite[0] if finite else None, "median": statistics.median(finite) if finite else None,
                    "p90": q(0.9), "max": _json_num(worst.epsilon), "mean": statistics.fmean(finite) if finite else None},
        "rounds": {"min": min(d.rounds for d in devices), "median": statistics.median([d.rounds for d in devices]),
                   "max": max(d.rounds for d in devices), "total": sum(d.rounds for d in devices)},
        "over_cap": sum(1 for d in devices if d.cap is not None and d.epsilon > d.cap),
        "worst_device": {**asdict(worst), "epsilon": _json_num(worst.epsilon)},
        "per_device": [{**asdict(d), "epsilon": _json_num(d.epsilon)} for d in devices],
    }
    if empirical:
        report["empirical"] = empirical
    _write(json_path, json.dumps(report, indent=2))
    if html_path is not None:
        top = sorted(devices, key=lambda d: (-d.epsilon, -d.rounds))[:20]
        stats_rows = [[k, _num(_from_json(v))] for k, v in report["epsilon"].items()]
        body = (
            f"<h1>{html.escape(title)}</h1><p>{len(devices)} devices; worst device "
            f"<b id=\"worst-device\">{html.escape(worst.device_id)}</b> at ε={_num(worst.epsilon)} "
            f"(δ={_num(worst.delta, 2)}, {worst.rounds} rounds); {report['over_cap']} over their cap; "
            f"{report['non_private_devices']} non-private.</p>"
            f"<h2>Epsilon across devices</h2>{_table(['statistic', 'ε'], stats_rows, table_id='epsilon-stats')}"
            f'<img class="plot" id="population-plot" alt="epsilon distribution and rounds per device" '
            f'src="data:image/png;base64,{_population_plots(devices)}">'
            f"<h2>Devices with the largest epsilon</h2>"
            + _table(["device", "unit", "ε", "δ", "rounds", "cap"],
                     [[d.device_id, d.unit, _num(d.epsilon), _num(d.delta, 2), d.rounds, _num(d.cap)] for d in top],
                     left=2, table_id="devices")
            + _empirical_html(empirical)
        )
        _write(html_path, _page(title, body))
    return report
