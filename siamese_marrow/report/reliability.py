"""How far g can be trusted, as figures and report sections: the reliability diagram of g's top
probability (before and after a temperature) and the risk-coverage curve of ``--abstain-below``,
with the table of thresholds that reach given accuracies.

Input: the ``metrics.json`` of ``evaluate`` (``ece``, ``reliability``, ``calibration``,
``risk_coverage``, ``abstention_thresholds``). Figures use a matplotlib ``Figure`` and the Agg
canvas only (no pyplot), as :mod:`.figures` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .figures import _no_data, _save
from .tables import fmt, table


def _bin_counts(bins: Sequence[Mapping[str, Any]]) -> str:
    counts = sorted({int(b["count"]) for b in bins})
    each = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{len(bins)} equal-count bins of {each} calls"


def _reliability_panel(ax: Any, bins: Sequence[Mapping[str, Any]], title: str) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    if not bins:
        _no_data(ax, "no calls")
        ax.set_title(title, fontsize=10)
        return
    conf = np.array([b["confidence"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    lo = np.array([b["lo"] for b in bins])
    hi = np.array([b["hi"] for b in bins])
    ax.vlines(conf, np.minimum(conf, acc), np.maximum(conf, acc), color="#c0504d", alpha=0.6)
    ax.errorbar(
        conf,
        acc,
        xerr=[conf - lo, hi - conf],
        fmt="o-",
        color="#1f3f66",
        ecolor="0.55",
        elinewidth=0.8,
        capsize=2,
        markersize=4,
        label="accuracy per bin (bar: its range of confidence)",
    )
    ax.set_xlim(max(0.0, min(lo.min(), acc.min()) - 0.05), 1.01)
    ax.set_ylim(max(0.0, min(lo.min(), acc.min()) - 0.05), 1.01)
    ax.set_xlabel("top probability of g (mean of the bin)")
    ax.set_ylabel("fraction of the bin's calls that are right")
    ax.set_title(f"{title}\n{_bin_counts(bins)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def reliability_png(metrics: Mapping[str, Any], out: str | Path) -> Path:
    """Reliability diagram of g's top probability: equal-count bins (mean confidence against
    accuracy, the bin's confidence range as a bar, the gap to the diagonal in red), for the raw g
    and, when ``metrics["calibration"]`` holds one, after the temperature."""
    cal = metrics.get("calibration") or {}
    panels = [(metrics.get("reliability") or [], f"model's own g: ECE {metrics.get('ece', 0):.3f}")]
    if cal.get("reliability") is not None:
        panels.append(
            (cal["reliability"], f"temperature T={cal['temperature']:.3g}: ECE {cal['ece']:.3f}")
        )
    fig = Figure(figsize=(5.2 * len(panels), 4.9), layout="constrained")
    for ax, (bins, title) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        _reliability_panel(ax, bins, title)
    return _save(fig, out)


def risk_coverage_png(metrics: Mapping[str, Any], out: str | Path) -> Path:
    """Accuracy of the calls kept against the fraction kept as ``--abstain-below`` rises, with the
    target accuracies as dashed lines and the threshold reaching each one marked."""
    curve = metrics.get("risk_coverage") or []
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if not curve:
        _no_data(ax, "no calls")
        return _save(fig, out)
    cov = [p["coverage"] for p in curve]
    acc = [p["accuracy"] for p in curve]
    ax.plot(cov, acc, color="#1f3f66", linewidth=1.6, marker=".", markersize=3, label="kept calls")
    rows = metrics.get("abstention_thresholds") or []
    low = min([*acc, *(r["target_accuracy"] for r in rows)])
    reached: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        ax.axhline(row["target_accuracy"], color="0.6", linestyle=":", linewidth=1)
        if row.get("threshold") is not None:
            reached.setdefault(row["threshold"], []).append(row)
    for i, (thr, same) in enumerate(sorted(reached.items())):
        c, a = same[0]["coverage"], same[0]["accuracy"]
        wanted = ", ".join(f"{r['target_accuracy']:.2f}" for r in same)
        ax.plot([c], [a], "o", color="#c0504d", markersize=5)
        ax.annotate(
            f"accuracy >= {wanted}: abstain below {_floor(thr)}, keeps {100 * c:.0f}%",
            (c, a),
            textcoords="offset points",
            xytext=(8 if c < 0.5 else -8, -12 - 11 * i),
            ha="left" if c < 0.5 else "right",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(max(0.0, low - 0.05), 1.01)
    ax.set_xlabel("coverage: fraction of calls kept (the rest called 'uncertain')")
    ax.set_ylabel("accuracy of the kept calls")
    ax.set_title(f"Risk-coverage: abstaining below a threshold ({curve[-1]['kept']} calls)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, out)


def _floor(threshold: float, digits: int = 4) -> str:
    """A threshold rounded down, so that passing the shown value keeps at least its calls."""
    return f"{math.floor(threshold * 10**digits) / 10**digits:.{digits}f}"


def calibration_section(metrics: Mapping[str, Any]) -> str:
    """ECE and NLL of g before and after the temperature, with the bins in a collapsed table."""
    if "ece" not in metrics:
        return ""
    cal = metrics.get("calibration") or {}
    rows = [["model's own g", "&mdash;", fmt(metrics.get("ece")), fmt(metrics.get("nll"))]]
    if cal.get("ece") is not None:
        rows.append(
            [
                f"temperature T = {cal['temperature']:.4g}",
                escape(str(cal.get("source", ""))),
                fmt(cal.get("ece")),
                fmt(cal.get("nll")),
            ]
        )
    note = ""
    if cal and cal.get("ece") is None:
        note = f'<p class="note">No temperature: {escape(str(cal.get("source", "")))}.</p>'
    bins = []
    for name, got in (("own g", metrics.get("reliability")), ("with T", cal.get("reliability"))):
        for i, r in enumerate(got or []):
            keys = ("lo", "hi", "confidence", "accuracy", "count")
            bins.append([escape(name), fmt(i + 1), *(fmt(r[k]) for k in keys)])
    headers = ["g", "bin", "lowest p", "highest p", "mean p", "accuracy", "calls"]
    return (
        '<h2 id="calibration">Calibration: does g = 0.9 mean 90%?</h2>'
        + table(["probabilities", "temperature fitted on", "ECE", "NLL"], rows, text_cols=2)
        + note
        + '<p class="note">ECE: expected calibration error of g\'s top probability over '
        "equal-count bins (0 = a call made with probability p is right a fraction p of the "
        "time). A temperature divides the consensus logits; it never changes a call, only how "
        "sure g is. <code>siamese-marrow bank calibrate</code> stores one in a bank, and "
        "<code>classify</code> then uses it.</p>"
        + "<details><summary>Reliability bins</summary>"
        + table(headers, bins)
        + "</details>"
    )


def abstention_section(metrics: Mapping[str, Any]) -> str:
    """The thresholds of ``--abstain-below`` that reach given accuracies, with what each keeps."""
    rows_in = metrics.get("abstention_thresholds")
    if rows_in is None:
        return ""
    rows = []
    for r in rows_in:
        thr = r.get("threshold")
        rows.append(
            [
                fmt(r["target_accuracy"]),
                escape(_floor(thr)) if thr is not None else "not reached",
                fmt(r.get("coverage")),
                fmt(r.get("kept")),
                fmt(r.get("accuracy")),
            ]
        )
    on = escape(str(metrics.get("risk_coverage_on", "g")))
    return (
        '<h2 id="abstention">Abstention: which calls to trust without a human</h2>'
        + table(["accuracy wanted", "--abstain-below", "coverage", "calls kept", "accuracy"], rows)
        + f'<p class="note">Calls whose top probability is below the threshold are called '
        f"'uncertain' and left to a person. Computed on {on}. The thresholds are read off "
        "these images' own curve, so they are tuned to them: confirm them on new images. "
        "Thresholds are rounded down; metrics.json has the exact values.</p>"
    )
