"""Retrieval metrics, defined as pytorch-metric-learning's ``AccuracyCalculator`` defines them.

For a query q with label y, let ``R`` be the number of references labelled y (minus one when the
query itself is among the references: it is excluded from its own neighbours). With the ranked
neighbour labels ``n_1, n_2, ...`` and ``rel(i) = [n_i == y]``:

- precision@1 = rel(1);
- R-precision = (1/R) * sum_{i<=R} rel(i);
- MAP@R = (1/R) * sum_{i<=R} P(i) rel(i), with P(i) = (1/i) * sum_{j<=i} rel(j);
- recall@k = [sum_{i<=k} rel(i) >= 1] (the deep-metric-learning "Recall@K": at least one
  neighbour of the right class among the first k).

Each is averaged over queries. Queries with ``R = 0`` ("lone" queries: their class has no other
reference) are left out of every average, as in pytorch-metric-learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .faiss_index import FaissIndex

if TYPE_CHECKING:
    from .bank import AnchorBank


def _check(query_labels: np.ndarray, knn_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query_labels)
    n = np.asarray(knn_labels)
    if q.ndim != 1 or n.ndim != 2 or len(q) != len(n):
        raise ValueError(
            f"expected query labels (Q,) and neighbour labels (Q, K); got {q.shape} and {n.shape}"
        )
    return q, n


def _relevant(q: np.ndarray, n: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    rel = n == q[:, None]
    if r is not None:
        rel &= np.arange(n.shape[1])[None, :] < np.asarray(r)[:, None]
    return rel


def precision_at_1(query_labels: np.ndarray, knn_labels: np.ndarray) -> float:
    """Fraction of queries whose nearest neighbour has their label. ``(Q,)``, ``(Q, K)``."""
    q, n = _check(query_labels, knn_labels)
    return float(np.mean(n[:, 0] == q)) if len(q) else 0.0


def r_precision(query_labels: np.ndarray, knn_labels: np.ndarray, r: np.ndarray) -> float:
    """Mean over queries of (same-label neighbours among the first R) / R; ``r (Q,) >= 1``."""
    q, n = _check(query_labels, knn_labels)
    r = np.asarray(r)
    if not len(q):
        return 0.0
    return float(np.mean(_relevant(q, n, r).sum(1) / r))


def map_at_r(query_labels: np.ndarray, knn_labels: np.ndarray, r: np.ndarray) -> float:
    """Mean over queries of (1/R) sum_{i<=R} P(i) rel(i); ``r (Q,) >= 1``."""
    q, n = _check(query_labels, knn_labels)
    r = np.asarray(r)
    if not len(q):
        return 0.0
    rel = _relevant(q, n, r)
    precision = np.cumsum(rel, axis=1) / np.arange(1, n.shape[1] + 1)[None, :]
    return float(np.mean((precision * rel).sum(1) / r))


def recall_at_k(query_labels: np.ndarray, knn_labels: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one same-label neighbour among the first ``k``."""
    q, n = _check(query_labels, knn_labels)
    if not len(q):
        return 0.0
    return float(np.mean((n[:, :k] == q[:, None]).any(1)))


def retrieval_metrics(
    query_labels: np.ndarray,
    knn_labels: np.ndarray,
    r: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """All four metrics over the non-lone queries (``r >= 1``); ``knn_labels (Q, K)`` must hold at
    least ``max(r)`` columns (pad with a label no query has, e.g. -1)."""
    q, n = _check(query_labels, knn_labels)
    r = np.asarray(r)
    keep = r >= 1
    if keep.any() and n.shape[1] < int(r[keep].max()):
        raise ValueError(f"knn_labels has {n.shape[1]} columns; R goes up to {int(r[keep].max())}")
    q, n, r = q[keep], n[keep], r[keep]
    out: dict[str, Any] = {
        "n_queries": int(keep.sum()),
        "n_lone_queries": int((~keep).sum()),
        "precision_at_1": precision_at_1(q, n),
        "r_precision": r_precision(q, n, r),
        "map_at_r": map_at_r(q, n, r),
    }
    for k in ks:
        out[f"recall_at_{k}"] = recall_at_k(q, n, k)
    return out


def exact_knn(
    queries: np.ndarray, references: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``(Q, k)`` of the ``k`` largest inner products (-1 when fewer), leaving out
    ``exclude[i]`` (a reference row, or -1) from query i's list."""
    refs = np.ascontiguousarray(references, dtype=np.float32)
    index = FaissIndex(refs.shape[1], "Flat", "ip")
    index.add(refs)
    extra = 0 if exclude is None else 1
    kk = min(k + extra, len(refs))
    _, ids = index.search(queries, max(kk, 1))
    if exclude is not None:
        drop = (ids == np.asarray(exclude)[:, None]) & (ids >= 0)
        order = np.argsort(drop, axis=1, kind="stable")
        ids = np.where(drop, -1, ids)
        ids = np.take_along_axis(ids, order, axis=1)
    ids = ids[:, :k]
    if ids.shape[1] < k:
        ids = np.concatenate([ids, np.full((len(ids), k - ids.shape[1]), -1, np.int64)], axis=1)
    return ids


def evaluate_retrieval(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    exclude: np.ndarray | None = None,
    same_set: bool = False,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Metrics of exact cosine retrieval of ``query_emb (Q, D)`` among ``ref_emb (N, D)``.

    Integer labels ``>= 0``. ``same_set=True``: the queries are the references (each query
    excluded from its own list); ``exclude (Q,)``: the reference row that is the query itself, or
    -1. R is each query's class size in the references, minus one when it is excluded.
    """
    q_lab = np.asarray(query_labels, dtype=np.int64)
    r_lab = np.asarray(ref_labels, dtype=np.int64)
    if same_set:
        exclude = np.arange(len(q_lab))
    counts = np.bincount(r_lab, minlength=int(max(q_lab.max(initial=0), r_lab.max(initial=0))) + 1)
    r = np.where(q_lab >= 0, counts[q_lab.clip(0)], 0)
    if exclude is not None:
        r = r - (np.asarray(exclude) >= 0)
    k = max(int(r.max(initial=0)), max(ks), 1)
    rows = exact_knn(query_emb, ref_emb, k, exclude)
    knn = np.where(rows >= 0, r_lab[rows.clip(0)], -1)
    out = retrieval_metrics(q_lab, knn, r, ks)
    out["k"] = k
    return out


def bank_retrieval(
    bank: AnchorBank,
    query_emb: np.ndarray,
    query_labels: Sequence[str],
    query_paths: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Retrieval metrics of queries against the bank's anchors (exact cosine on the bank's
    embeddings). A query whose path is an anchor of the bank is excluded from its own list."""
    lookup = {c: i for i, c in enumerate(bank.classes)}
    q_lab = np.array([lookup.get(lab, -1) for lab in query_labels], dtype=np.int64)
    exclude = None
    if query_paths is not None:
        row_of = {a["path"]: i for i, a in enumerate(bank.anchors)}
        exclude = np.array([row_of.get(str(p), -1) for p in query_paths], dtype=np.int64)
    out = evaluate_retrieval(query_emb, q_lab, bank.embeddings, bank.labels, exclude=exclude, ks=ks)
    out["n_unknown_label"] = int((q_lab < 0).sum())
    return out
