"""Classification metrics for imbalanced data (scikit-learn computes them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
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
