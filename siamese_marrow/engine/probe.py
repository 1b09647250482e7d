"""Baselines on frozen embeddings: a logistic-regression probe and k-nearest neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .metrics import classification_metrics


def logistic_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Standardised features -> multinomial logistic regression (class-balanced weights)."""
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced", random_state=seed),
    )
    clf.fit(x_train, y_train)
    return classification_metrics(y_test, clf.predict(x_test), classes)


def knn_classify(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    k: int = 1,
) -> dict[str, Any]:
    """Cosine k-NN (distance-weighted for k > 1)."""
    clf = KNeighborsClassifier(
        n_neighbors=min(k, len(x_train)),
        metric="cosine",
        weights="distance" if k > 1 else "uniform",
    )
    clf.fit(x_train, y_train)
    return classification_metrics(y_test, clf.predict(x_test), classes)
