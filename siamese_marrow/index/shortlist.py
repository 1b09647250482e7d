"""The class-balanced shortlist: each class's own nearest anchors, found without scoring every
anchor.

Every class c gets exactly ``min(per_class_k, n_c)`` candidates, its nearest anchors by cosine,
so ``mean`` and ``top-k`` aggregation see the same number of anchors per class and a class's
score does not depend on its size. Each class is searched on its own (the top-M holds only an
approximate few of the nearest classes' anchors; in the top-M mode only the classes with too few
anchors there are searched):
exactly (one matrix product) when small, else, in an IVF index, in the lists nearest the query
*among the lists that hold that class* (``nprobe`` of them), with an id selector admitting only
the class's ids (:meth:`FaissIndex.search_preassigned`). The caller's exact cosines then rank the
candidates, so an approximate index only decides which anchors are looked at.
"""

from __future__ import annotations

import numpy as np

from .faiss_index import FaissIndex

#: classes up to this many anchors are searched exactly (a matrix product per class)
EXACT_CLASS_UP_TO = 20_000


def class_members(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Rows of each class, ``[(n_c,) int64 for c in range(C)]``."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def per_class_counts(rows: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(B, C)`` number of candidates of each class among ``rows (B, K)`` (-1 = padding)."""
    b = rows.shape[0]
    lab = np.where(rows >= 0, labels[rows.clip(0)], -1) + 1  # 0 = padding
    flat = (np.arange(b)[:, None] * (num_classes + 1) + lab).ravel()
    counts = np.bincount(flat, minlength=b * (num_classes + 1)).reshape(b, num_classes + 1)
    return counts[:, 1:]


def unique_rows(rows: np.ndarray) -> np.ndarray:
    """Drop duplicate candidates in each row of ``rows (B, K)``; -1 padding moved to the end and
    columns that are padding for every query trimmed."""
    if rows.shape[1] == 0:
        return rows
    s = np.sort(rows, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s[dup] = -1
    order = np.argsort(s < 0, axis=1, kind="stable")
    s = np.take_along_axis(s, order, axis=1)
    width = int((s >= 0).sum(1).max()) if len(s) else 0
    return s[:, : max(width, 1)]


def cosines(queries: np.ndarray, embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(B, K)`` inner products of ``queries (B, D)`` with the rows ``(B, K)`` of
    ``embeddings`` (float32 or float16); padding (-1) gets -inf."""
    cand = np.asarray(embeddings[rows.clip(0)], dtype=np.float32)  # (B, K, D)
    cos = np.einsum("bkd,bd->bk", cand, queries)
    return np.where(rows >= 0, cos, -np.inf).astype(np.float32)


def keep_per_class(
    rows: np.ndarray, cos: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar candidates of each class in each row of ``rows (B, K)`` (distinct
    rows, -1 = padding), by ``cos (B, K)``; the others become padding. Returns rows and cos."""
    lab = np.where(rows >= 0, labels[rows.clip(0)], -1)
    key = np.where(rows >= 0, lab * 4.0 + (1.0 - cos), np.inf)  # by class, then most similar
    order = np.argsort(key, axis=1, kind="stable")
    rows, cos, lab = (np.take_along_axis(a, order, 1) for a in (rows, cos, lab))
    pos = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    start = np.ones(rows.shape, dtype=bool)
    start[:, 1:] = lab[:, 1:] != lab[:, :-1]
    first = np.maximum.accumulate(np.where(start, pos, 0), axis=1)
    drop = (pos - first >= k) | (rows < 0)
    rows = np.where(drop, -1, rows)
    cos = np.where(drop, -np.inf, cos)
    order = np.argsort(rows < 0, axis=1, kind="stable")
    rows, cos = np.take_along_axis(rows, order, 1), np.take_along_axis(cos, order, 1)
    width = max(int((rows >= 0).sum(1).max()) if len(rows) else 0, 1)
    return rows[:, :width], cos[:, :width]


class Shortlist:
    """Candidates for queries over a set of labelled anchors (one per classify call).

    ``embeddings (N, D)`` (float32 or float16) with ``labels (N,)`` and ``ids (N,)`` as held by
    ``index``; ``balanced`` chooses the class-balanced shortlist (module docstring) over the
    top-M plus the nearest anchors of the classes missing from it.
    """

    def __init__(
        self,
        index: FaissIndex | None,
        embeddings: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        num_classes: int,
        per_class_k: int,
        balanced: bool = True,
    ) -> None:
        self.index, self.embeddings, self.labels, self.ids = index, embeddings, labels, ids
        self.num_classes, self.k, self.balanced = num_classes, per_class_k, balanced
        self.members = class_members(labels, num_classes)
        self.sizes = np.array([len(m) for m in self.members], dtype=np.int64)
        self._lists: np.ndarray | None = None  # (C, nlist) which IVF lists hold each class
        self._selectors: dict[int, object] = {}

    def _class_lists(self) -> np.ndarray:
        if self._lists is None:
            lists = self.index.list_ids()
            rows = np.searchsorted(self.ids, np.concatenate(lists))
            owner = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
            mask = np.zeros((self.num_classes, len(lists)), dtype=bool)
            mask[self.labels[rows], owner] = True
            self._lists = mask
        return self._lists

    def _search_class(self, c: int, q: np.ndarray, coarse: tuple | None) -> np.ndarray:
        """Rows ``(b, kc)`` of class ``c``'s nearest anchors for queries ``q (b, D)``."""
        rows_c = self.members[c]
        kc = min(self.k, len(rows_c))
        if coarse is None or len(rows_c) <= EXACT_CLASS_UP_TO:
            sims = q @ np.asarray(self.embeddings[rows_c], dtype=np.float32).T  # (b, n_c)
            if kc == len(rows_c):
                return np.broadcast_to(rows_c, (len(q), kc))
            return rows_c[np.argpartition(-sims, kc - 1, axis=1)[:, :kc]]
        xq, dis, lists = coarse
        allowed = self._class_lists()[c][lists]  # (b, nlist), lists nearest first
        p = min(self.index.nprobe, int(allowed.sum(1).max()))
        order = np.argsort(~allowed, axis=1, kind="stable")[:, :p]
        pick = np.take_along_axis(lists, order, 1)
        pick = np.where(np.take_along_axis(allowed, order, 1), pick, -1)
        if c not in self._selectors:
            self._selectors[c] = FaissIndex.selector(self.ids[rows_c])
        _, ids = self.index.search_preassigned(
            xq, kc, np.take_along_axis(dis, order, 1), pick, self._selectors[c]
        )
        rows = np.searchsorted(self.ids, ids.clip(0))
        return np.where(ids >= 0, rows, -1)

    def candidates(self, queries: np.ndarray, top_rows: np.ndarray) -> np.ndarray:
        """Candidate rows ``(B, K)`` (-1 = padding) for ``queries (B, D)`` float32, given the
        index's top-M rows ``top_rows (B, M)``."""
        b, k = len(queries), self.k
        if k <= 0 or self.num_classes == 0:
            return unique_rows(top_rows)
        if self.balanced:  # every class searched on its own: its nearest, not the top-M's
            need = np.broadcast_to(self.sizes > 0, (b, self.num_classes))
        else:
            counts = per_class_counts(top_rows, self.labels, self.num_classes)
            need = counts < np.minimum(k, self.sizes)
        big = self.sizes > EXACT_CLASS_UP_TO
        use_ivf = self.index is not None and self.index.kind == "ivf"
        coarse = None
        if use_ivf and (need & big).any():
            xq, dis, lists = self.index.coarse(queries)
            coarse = (xq, dis, lists)
        extra = np.full((b, self.num_classes * k), -1, np.int64)
        for c in np.flatnonzero(need.any(0)):
            qs = np.flatnonzero(need[:, c])
            sub = None if coarse is None else tuple(a[qs] for a in coarse)
            found = self._search_class(int(c), queries[qs], sub)
            extra[qs[:, None], c * k + np.arange(found.shape[1])] = found
        rows = unique_rows(np.concatenate([top_rows, extra], axis=1))
        if not self.balanced:
            return rows
        rows, _ = keep_per_class(rows, cosines(queries, self.embeddings, rows), self.labels, k)
        return rows
