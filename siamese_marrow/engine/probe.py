"""Baselines on an embedding: a logistic-regression probe, k-nearest neighbours and the nearest
class prototype (what the siamese consensus must beat on its own embedding)."""

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


def prototype_classify(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Nearest class mean by cosine (the renormalised mean of each class's unit-norm rows)."""
    x_train = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    x_test = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
    n = len(classes)
    onehot = np.eye(n, dtype=np.float64)[y_train]
    protos = onehot.T @ x_train
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    sims = x_test @ protos.T
    sims[:, onehot.sum(0) == 0] = -np.inf
    return classification_metrics(y_test, sims.argmax(1), classes)
