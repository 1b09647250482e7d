"""How far g's top probability can be trusted: reliability bins, expected calibration error, and
the risk-coverage curve of abstaining below a threshold, with the thresholds that reach given
accuracies. Plain numpy over ``confidence (N,)`` (g's top probability) and ``correct (N,)``
(whether the top class is the true one; an "uncertain" call still has a top class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Accuracies a lab may ask the kept calls to reach (the thresholds table).
TARGET_ACCURACIES = (0.90, 0.95, 0.99)

#: Most points of the risk-coverage curve written to metrics.json (the table uses every point).
MAX_CURVE_POINTS = 200


def _inputs(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences but {ok.size} correct flags")
    return conf, ok


def top_confidence(probs: np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
    """``(confidence, correct)`` of g ``(N, C)`` against the true classes ``labels (N,)``."""
    p = np.asarray(probs)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities {p.shape} and {len(y)} labels; expected (N, C) and N")
    if not len(p):
        return np.zeros(0), np.zeros(0, bool)
    return p.max(1).astype(np.float64), p.argmax(1) == y


def reliability_bins(confidence: Any, correct: Any, n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-count bins of the calls sorted by confidence (lowest first): ``min(n_bins, N)``
    bins whose sizes differ by at most one (the first ones larger), each
    ``{"lo", "hi", "confidence", "accuracy", "count"}`` (lowest, highest and mean confidence,
    fraction correct, number of calls)."""
    conf, ok = _inputs(confidence, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1")
    order = np.argsort(conf, kind="stable")
    bins = []
    for part in np.array_split(order, min(n_bins, len(conf))) if len(conf) else []:
        c = conf[part]
        bins.append(
            {
                "lo": float(c.min()),
                "hi": float(c.max()),
                "confidence": float(c.mean()),
                "accuracy": float(ok[part].mean()),
                "count": int(len(part)),
            }
        )
    return bins


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float:
    """ECE of reliability bins: ``sum_b (n_b / N) |accuracy_b - confidence_b|``."""
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total)


def _curve(conf: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every distinct threshold t (highest first) with the calls kept at ``conf >= t``:
    ``(threshold, kept, accuracy)``."""
    order = np.argsort(-conf, kind="stable")
    c, hits = conf[order], np.cumsum(ok[order])
    last = np.flatnonzero(np.r_[c[1:] != c[:-1], True])  # last call at each threshold
    kept = last + 1
    return c[last], kept, hits[last] / kept


def risk_coverage(
    confidence: Any, correct: Any, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, Any]]:
    """Accuracy of the calls kept against the fraction kept, as the threshold varies.

    A call is kept when its confidence is ``>= threshold`` (``--abstain-below threshold`` calls
    the others "uncertain"). One point per distinct confidence, highest threshold (least
    coverage) first, each ``{"threshold", "coverage", "accuracy", "kept"}``; the last keeps
    every call. Longer curves are thinned to ``max_points`` evenly spaced points, ends kept.
    """
    conf, ok = _inputs(confidence, correct)
    if not len(conf):
        return []
    thr, kept, acc = _curve(conf, ok)
    idx = np.arange(len(thr))
    if len(idx) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(thr) - 1, max(max_points, 2))).astype(int))
    return [
        {
            "threshold": float(thr[i]),
            "coverage": float(kept[i] / len(conf)),
            "accuracy": float(acc[i]),
            "kept": int(kept[i]),
        }
        for i in idx
    ]


def accuracy_thresholds(
    confidence: Any, correct: Any, targets: Sequence[float] = TARGET_ACCURACIES
) -> list[dict[str, Any]]:
    """For each target accuracy, the lowest threshold (the most calls kept) at which the kept
    calls are at least that accurate: ``{"target_accuracy", "threshold", "coverage",
    "accuracy", "kept"}``; ``threshold`` None and coverage 0 when no threshold reaches it."""
    conf, ok = _inputs(confidence, correct)
    out = []
    thr, kept, acc = _curve(conf, ok) if len(conf) else (np.zeros(0),) * 3
    for target in targets:
        good = np.flatnonzero(acc >= target - 1e-12)
        if not len(good):
            out.append(
                {
                    "target_accuracy": float(target),
                    "threshold": None,
                    "coverage": 0.0,
                    "accuracy": None,
                    "kept": 0,
                }
            )
            continue
        i = good[-1]  # thresholds fall along the curve: the last reaching it keeps the most
        out.append(
            {
                "target_accuracy": float(target),
                "threshold": float(thr[i]),
                "coverage": float(kept[i] / len(conf)),
                "accuracy": float(acc[i]),
                "kept": int(kept[i]),
            }
        )
    return out


def reliability_summary(
    probs: np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = 10
) -> dict[str, Any]:
    """``{"ece", "reliability"}`` of g ``(N, C)`` against ``labels (N,)``."""
    bins = reliability_bins(*top_confidence(probs, labels), n_bins)
    return {"ece": expected_calibration_error(bins), "reliability": bins}


def abstention_summary(
    probs: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    targets: Sequence[float] = TARGET_ACCURACIES,
) -> dict[str, Any]:
    """``{"risk_coverage", "abstention_thresholds"}`` of g ``(N, C)`` against ``labels (N,)``."""
    conf, ok = top_confidence(probs, labels)
    return {
        "risk_coverage": risk_coverage(conf, ok),
        "abstention_thresholds": accuracy_thresholds(conf, ok, targets),
    }
