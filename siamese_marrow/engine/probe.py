"""Baselines on an embedding: a logistic-regression probe, k-nearest neighbours and the nearest
class prototype (what the siamese consensus must beat on its own embedding). Each ``*_predict``
gives the predictions, for a paired comparison (``metrics.paired_counts``); each of the others
their metrics."""

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
    pred = logistic_predict(x_train, y_train, x_test, seed)
    return classification_metrics(y_test, pred, classes)


def logistic_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0
) -> np.ndarray:
    """The predictions ``(B,)`` of :func:`logistic_probe`."""
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced", random_state=seed),
    )
    return clf.fit(x_train, y_train).predict(x_test)


def knn_classify(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    k: int = 1,
) -> dict[str, Any]:
    """Cosine k-NN (distance-weighted for k > 1)."""
    return classification_metrics(y_test, knn_predict(x_train, y_train, x_test, k), classes)


def knn_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 1
) -> np.ndarray:
    """The predictions ``(B,)`` of :func:`knn_classify`."""
    clf = KNeighborsClassifier(
        n_neighbors=min(k, len(x_train)),
        metric="cosine",
        weights="distance" if k > 1 else "uniform",
    )
    return clf.fit(x_train, y_train).predict(x_test)


def prototype_classify(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Nearest class mean by cosine (the renormalised mean of each class's unit-norm rows)."""
    pred = prototype_predict(x_train, y_train, x_test, len(classes))
    return classification_metrics(y_test, pred, classes)


def prototype_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int
) -> np.ndarray:
    """The predictions ``(B,)`` of :func:`prototype_classify` over ``num_classes`` classes (a
    class without training rows is never predicted)."""
    x_train = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    x_test = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
    onehot = np.eye(num_classes, dtype=np.float64)[y_train]
    protos = onehot.T @ x_train
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    sims = x_test @ protos.T
    sims[:, onehot.sum(0) == 0] = -np.inf
    return sims.argmax(1)
