"""Classification metrics for imbalanced data (scikit-learn computes them), and the paired test
of two classifiers on the same images (scipy's exact binomial test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, weighted and macro F1, per-class figures and the confusion
    matrix (rows = true class, columns = predicted, in the order of ``classes``).

    Predictions of ``-1`` (abstained) count as wrong and as a column of their own is not added.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "f1_weighted": float(
            f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)
        ),
        "f1_macro": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


HEADLINE = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The four figures to report together on imbalanced data."""
    return {k: round(float(metrics[k]), 4) for k in HEADLINE}


def paired_counts(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
) -> dict[str, Any]:
    """Two classifiers' predictions on the same images, compared image by image: how many only
    ``a`` gets right (``a_only``), how many only ``b`` (``b_only``), and the exact McNemar test of
    those discordant counts (:func:`mcnemar`). The images both get right or both get wrong say
    nothing about which is better and are left out of the test, so on a small test split this
    separates a real difference from noise where two accuracies alone cannot. ``both_wrong``
    counts the images neither gets right: errors no choice between the two can recover."""
    y_true, pred_a, pred_b = (np.asarray(v, dtype=np.int64) for v in (y_true, pred_a, pred_b))
    if not (y_true.shape == pred_a.shape == pred_b.shape) or y_true.ndim != 1:
        raise ValueError(
            f"paired_counts: labels {y_true.shape}, predictions {pred_a.shape} and "
            f"{pred_b.shape}; expected one prediction of each classifier per image"
        )
    right_a, right_b = pred_a == y_true, pred_b == y_true
    out = mcnemar(int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum()), n=len(y_true))
    out["both_wrong"] = int((~right_a & ~right_b).sum())
    return out


def mcnemar(a_only: int, b_only: int, n: int | None = None) -> dict[str, Any]:
    """The exact (binomial) McNemar test of discordant counts: under "neither classifier is
    better" each of the ``a_only + b_only`` discordant images is a fair coin. ``p_value``: its
    two-sided p (1.0 with no discordant image). Counts of several test splits (seeds) are summed
    first and tested once.

    With ``n``, the number of images compared, also how much more accurate ``a`` is than ``b``
    (``difference`` = (a_only - b_only) / n, a fraction) and its 95% interval
    (``difference_ci95``, the Wald interval of a difference of paired proportions): how large a
    gap the images can still hide when the p says nothing."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar: counts {a_only}, {b_only} must be >= 0")
    d = a_only + b_only
    p = binomtest(a_only, d, 0.5).pvalue if d else 1.0
    out: dict[str, Any] = {"a_only": int(a_only), "b_only": int(b_only), "p_value": float(p)}
    if n is not None:
        if n < d:
            raise ValueError(f"mcnemar: {d} discordant images out of n={n}; n counts them all")
        diff = (a_only - b_only) / n if n else 0.0
        half = norm.ppf(0.975) * np.sqrt(max(d - (a_only - b_only) ** 2 / n, 0.0)) / n if n else 0.0
        out |= {
            "n": int(n),
            "difference": float(diff),
            "difference_ci95": [float(diff - half), float(diff + half)],
        }
    return out
