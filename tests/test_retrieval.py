"""Retrieval metrics against values worked out by hand, and against a plain-loop oracle."""

from __future__ import annotations

import numpy as np
import pytest

from siamese_marrow.index.retrieval import (
    evaluate_retrieval,
    map_at_r,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)


def test_hand_worked_neighbour_lists() -> None:
    # query 0 (label 0, R=3): first three neighbours 0,1,0 -> R-precision 2/3,
    #   AP@R = (1/3) * (1/1 + 2/3) = 5/9; precision@1 = 1
    # query 1 (label 1, R=2): first two neighbours 0,0 -> 0, 0, 0 (its match is 3rd)
    q = np.array([0, 1])
    knn = np.array([[0, 1, 0, 0], [0, 0, 1, 1]])
    r = np.array([3, 2])
    assert precision_at_1(q, knn) == pytest.approx(0.5)
    assert r_precision(q, knn, r) == pytest.approx((2 / 3 + 0) / 2)
    assert map_at_r(q, knn, r) == pytest.approx((5 / 9 + 0) / 2)
    assert recall_at_k(q, knn, 1) == pytest.approx(0.5)
    assert recall_at_k(q, knn, 2) == pytest.approx(0.5)
    assert recall_at_k(q, knn, 3) == pytest.approx(1.0)


def angles(deg: list[float]) -> np.ndarray:
    a = np.deg2rad(np.array(deg))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_two_d_points_same_set() -> None:
    # class 0 at 0, 10, 20 degrees; class 1 at 15 and 90 degrees; each point queries the others.
    # neighbour labels by angle: 0deg -> [0,1,0,1]  10deg -> [1,0,0,1]  20deg -> [1,0,0,1]
    #                            15deg -> [0,0,0,1]  90deg -> [0,1,0,0]
    # R = 2 for class 0, 1 for class 1.
    # R-precision: 1/2, 1/2, 1/2, 0, 0       -> 0.3
    # AP@R:        1/2, 1/4, 1/4, 0, 0       -> 0.2   (10deg: (1/2)(0 + 1/2))
    # precision@1: 1, 0, 0, 0, 0             -> 0.2
    # recall@2:    1, 1, 1, 0, 1             -> 0.8
    x = angles([0, 10, 20, 15, 90])
    y = np.array([0, 0, 0, 1, 1])
    m = evaluate_retrieval(x, y, x, y, same_set=True, ks=(1, 2))
    assert m["n_queries"] == 5 and m["n_lone_queries"] == 0
    assert m["precision_at_1"] == pytest.approx(0.2)
    assert m["r_precision"] == pytest.approx(0.3)
    assert m["map_at_r"] == pytest.approx(0.2)
    assert m["recall_at_1"] == pytest.approx(0.2)
    assert m["recall_at_2"] == pytest.approx(0.8)

    # a class with one image has nobody to find: its query is "lone" and left out
    x2 = np.concatenate([x, angles([200])])
    y2 = np.concatenate([y, [2]])
    m2 = evaluate_retrieval(x2, y2, x2, y2, same_set=True, ks=(1, 2))
    assert m2["n_lone_queries"] == 1
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert m2[key] == pytest.approx(m[key])


def loop_oracle(q_lab, knn, r):
    """pytorch-metric-learning's definitions written as plain loops."""
    p1, rp, ap = [], [], []
    for y, row, big_r in zip(q_lab, knn, r, strict=True):
        rel = [int(v == y) for v in row[:big_r]]
        p1.append(int(row[0] == y))
        rp.append(sum(rel) / big_r)
        hits, s = 0, 0.0
        for i, v in enumerate(rel, start=1):
            if v:
                hits += 1
                s += hits / i
        ap.append(s / big_r)
    return np.mean(p1), np.mean(rp), np.mean(ap)


def test_matches_loop_oracle_on_random_lists() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(0, 4, 200)
    knn = rng.integers(0, 4, (200, 30))
    r = rng.integers(1, 31, 200)
    m = retrieval_metrics(q, knn, r, ks=(5,))
    p1, rp, ap = loop_oracle(q, knn, r)
    assert m["precision_at_1"] == pytest.approx(p1)
    assert m["r_precision"] == pytest.approx(rp)
    assert m["map_at_r"] == pytest.approx(ap)


def test_cross_set_r_is_the_class_size() -> None:
    ref = angles([0, 5, 40, 45, 50])
    ref_y = np.array([0, 0, 1, 1, 1])
    qry = angles([2, 44, 300])
    qry_y = np.array([0, 1, 2])  # class 2 is not among the references: lone
    m = evaluate_retrieval(qry, qry_y, ref, ref_y, ks=(1,))
    assert m["n_queries"] == 2 and m["n_lone_queries"] == 1
    assert m["k"] == 3
    assert m["r_precision"] == pytest.approx(1.0) and m["map_at_r"] == pytest.approx(1.0)


def test_too_short_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="R goes up to 3"):
        retrieval_metrics(np.array([0]), np.array([[0, 0]]), np.array([3]))
