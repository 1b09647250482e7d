"""The paired comparison of two classifiers on the same images (``engine.metrics``), the
baselines' predictions it compares (``engine.probe``), and how ``tools/bench_methods.py`` pools
it over seeds."""

from __future__ import annotations

import importlib.util
from math import comb
from pathlib import Path

import numpy as np
import pytest

from siamese_marrow.engine.metrics import mcnemar, paired_counts
from siamese_marrow.engine.probe import (
    knn_classify,
    knn_predict,
    logistic_predict,
    logistic_probe,
    prototype_classify,
    prototype_predict,
)

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def exact_two_sided(a: int, b: int) -> float:
    """The exact McNemar p written out: twice the smaller binomial tail at 1/2, at most 1."""
    n, k = a + b, min(a, b)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_paired_counts_count_only_the_discordant_images():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    a = np.array([0, 1, 2, 0, 0, 0, 1, 1])  # right on 0-3 and 7
    b = np.array([0, 1, 1, 1, 1, 2, 1, 0])  # right on 0, 1, 4, 5
    out = paired_counts(y, a, b)
    # a alone: images 2, 3, 7; b alone: 4, 5; both right (0, 1) and both wrong (6) do not count
    assert (out["a_only"], out["b_only"]) == (3, 2)
    assert out["p_value"] == pytest.approx(exact_two_sided(3, 2))
    swapped = paired_counts(y, b, a)
    assert (swapped["a_only"], swapped["b_only"]) == (2, 3)
    assert swapped["p_value"] == pytest.approx(out["p_value"])


@pytest.mark.parametrize(("a", "b"), [(1, 6), (5, 11), (0, 9), (10, 10), (3, 0)])
def test_mcnemar_is_the_exact_binomial_test(a, b):
    assert mcnemar(a, b)["p_value"] == pytest.approx(exact_two_sided(a, b))


def test_mcnemar_known_values_and_edges():
    assert mcnemar(1, 6)["p_value"] == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert mcnemar(0, 0)["p_value"] == 1.0  # nothing discordant: no evidence either way
    assert mcnemar(0, 8)["p_value"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="must be >= 0"):
        mcnemar(-1, 3)


def test_paired_counts_reject_mismatched_predictions():
    with pytest.raises(ValueError, match="one prediction of each classifier per image"):
        paired_counts([0, 1, 2], [0, 1, 2], [0, 1])


def blobs(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 2
    y_tr, y_te = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    x_tr = centres[y_tr] + rng.normal(size=(60, 16)) * 1.5
    x_te = centres[y_te] + rng.normal(size=(30, 16)) * 1.5
    return x_tr, y_tr, x_te, y_te


def test_predictions_are_what_the_metrics_score():
    x_tr, y_tr, x_te, y_te = blobs()
    names = ["a", "b", "c"]
    pairs = [
        (logistic_predict(x_tr, y_tr, x_te, 3), logistic_probe(x_tr, y_tr, x_te, y_te, names, 3)),
        (knn_predict(x_tr, y_tr, x_te, 5), knn_classify(x_tr, y_tr, x_te, y_te, names, 5)),
        (prototype_predict(x_tr, y_tr, x_te, 3), prototype_classify(x_tr, y_tr, x_te, y_te, names)),
    ]
    for pred, metrics in pairs:
        assert pred.shape == y_te.shape
        assert metrics["accuracy"] == pytest.approx(float((pred == y_te).mean()))
        assert np.array_equal(
            np.asarray(metrics["confusion_matrix"]),
            np.array([[np.sum((y_te == t) & (pred == p)) for p in range(3)] for t in range(3)]),
        )
    # on blobs this separable every method is far above chance
    assert all(float((p == y_te).mean()) > 0.8 for p, _ in pairs)


def test_prototype_predict_is_the_nearest_class_mean_by_cosine():
    x_tr = np.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    y_tr = np.array([0, 0, 2, 2])  # class 1 has no rows and is never predicted
    x_te = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.55]])
    means = np.stack([x_tr[:2].mean(0), x_tr[2:].mean(0)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    unit = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    expected = np.array([0, 2])[(unit @ means.T).argmax(1)]
    assert np.array_equal(prototype_predict(x_tr, y_tr, x_te, 3), expected)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_methods", TOOLS / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_result(y: np.ndarray, preds: dict[str, np.ndarray], bench) -> dict:
    rows = {n: {"balanced_accuracy": float((p == y).mean())} for n, p in preds.items()}
    return {"rows": rows, "fewshot": {}, "paired": bench.paired_with_shipped(y, preds)}


def test_bench_pairs_every_method_with_the_shipped_consensus_and_pools_seeds(bench):
    y = np.array([0, 1, 2, 0, 1, 2])
    shipped = bench.SHIPPED
    s1 = {shipped: np.array([0, 1, 2, 0, 0, 0]), "kNN-10": np.array([0, 1, 1, 1, 1, 2])}
    s2 = {shipped: np.array([0, 0, 2, 0, 1, 2]), "kNN-10": np.array([0, 1, 1, 1, 1, 1])}
    per_seed = [seed_result(y, s1, bench), seed_result(y, s2, bench)]
    assert set(per_seed[0]["paired"]) == {"kNN-10"}  # the consensus is not paired with itself
    first = per_seed[0]["paired"]["kNN-10"]
    assert (first["a_only"], first["b_only"]) == (2, 2)
    second = per_seed[1]["paired"]["kNN-10"]
    assert (second["a_only"], second["b_only"]) == (3, 1)
    pooled = bench.pool_paired(per_seed)["kNN-10"]
    assert (pooled["a_only"], pooled["b_only"]) == (5, 3)
    assert pooled["p_value"] == pytest.approx(exact_two_sided(5, 3))
    table = "\n".join(bench.paired_markdown(bench.pool_paired(per_seed)))
    assert "| kNN-10 | 5 | 3 | 0.727 |" in table


def test_bench_pools_nothing_when_a_seed_predates_the_paired_counts(bench):
    y = np.array([0, 1])
    new = seed_result(y, {bench.SHIPPED: y, "1-NN": y}, bench)
    old = {k: v for k, v in new.items() if k != "paired"}
    assert bench.pool_paired([new, old]) is None
    assert "no paired counts" in "\n".join(bench.paired_markdown(None))
