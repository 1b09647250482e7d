"""The class-balanced shortlist: each class's own nearest anchors, found without scoring every
anchor.

Every class c gets ``min(per_class_k, n_c)`` candidates (k_c), its nearest anchors by cosine, so
``mean`` and ``top-k`` aggregation see the same number of anchors per class and a class's score
does not depend on its size. Per query, starting from the index's top-M:

* classes up to ``EXACT_CLASS_UP_TO`` anchors (any class, without an IVF index) are searched
  exactly (one matrix product per class, all queries at once);
* a big class with k_c anchors in the top-M is *complete*: its k_c nearest are among them (up
  to the index's own approximation). One with f < k_c there has a consensus score (mean cosine of
  its k_c nearest) of at most ``(sum of its f cosines + (k_c - f) * s_M) / k_c``, s_M the
  smallest cosine of the top-M;
* the big classes that may win (their score if complete, else that bound, at least the best
  complete class's score less ``BOUND_MARGIN``) are searched precisely, in the
  ``PRECISE_NPROBE_FACTOR`` x nprobe IVF lists nearest the query among those holding the class,
  with an id selector admitting only the class's ids (:meth:`FaissIndex.search_preassigned`);
  the other incomplete ones cheaply, in ``CHEAP_NPROBE`` such lists: they cannot win, but still
  get candidates, so g covers every class.

Each class is one batched call across its queries; IVF searches return ``OVERFETCH`` x k_c
anchors and the exact cosines on the stored embeddings choose each class's k_c, so an
approximate (or quantized) index only decides which anchors are looked at. The bound is on the
cosine consensus; the model's own heads then score these candidates.
"""

from __future__ import annotations

import numpy as np

from .faiss_index import FaissIndex

#: classes up to this many anchors are searched exactly (a matrix product per class)
EXACT_CLASS_UP_TO = 20_000
#: a big class whose consensus bound (module docstring) is this far below the best complete
#: class's score cannot win: it is searched cheaply
BOUND_MARGIN = 0.01
#: IVF lists (among the class's own) such a class is searched in
CHEAP_NPROBE = 8
#: a class's IVF search returns this many times its k anchors, which exact cosines then rank
#: (the index's own, possibly quantized, distances only choose what is looked at)
OVERFETCH = 3
#: a class that may win is searched in this many times the index's tuned nprobe lists (at 10^6
#: anchors, the nprobe tuned to recall@10 0.95 gave 97% consensus agreement, twice it 100%)
PRECISE_NPROBE_FACTOR = 2


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
        #: query-class pairs searched precisely / cheaply by the last ``candidates`` call
        self.searched = {"precise": 0, "cheap": 0}
        #: ``(B, C)`` the big classes of the last call that could not win (searched cheaply)
        self.pruned = np.zeros((0, num_classes), dtype=bool)

    def _class_lists(self) -> np.ndarray:
        if self._lists is None:
            lists = self.index.list_ids()
            rows = np.searchsorted(self.ids, np.concatenate(lists))
            owner = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
            mask = np.zeros((self.num_classes, len(lists)), dtype=bool)
            mask[self.labels[rows], owner] = True
            self._lists = mask
        return self._lists

    def _exact_class(self, c: int, q: np.ndarray) -> np.ndarray:
        """Rows ``(b, kc)`` of class ``c``'s exact nearest anchors (one matrix product)."""
        rows_c = self.members[c]
        kc = min(self.k, len(rows_c))
        if kc == len(rows_c):
            return np.broadcast_to(rows_c, (len(q), kc))
        sims = q @ np.asarray(self.embeddings[rows_c], dtype=np.float32).T  # (b, n_c)
        return rows_c[np.argpartition(-sims, kc - 1, axis=1)[:, :kc]]

    def _ivf_class(self, c: int, coarse: tuple, nprobe: np.ndarray) -> np.ndarray:
        """Rows ``(b, kc)`` (-1 = not found) of class ``c``'s nearest anchors through the IVF:
        query i visits the ``nprobe[i]`` lists nearest it among those holding the class."""
        xq, dis, lists = coarse
        kc = min(self.k * OVERFETCH, len(self.members[c]))
        allowed = self._class_lists()[c][lists]  # (b, nlist), lists nearest first
        p = min(int(nprobe.max()), int(allowed.sum(1).max()))
        order = np.argsort(~allowed, axis=1, kind="stable")[:, :p]
        ok = np.take_along_axis(allowed, order, 1) & (np.arange(p) < nprobe[:, None])
        pick = np.where(ok, np.take_along_axis(lists, order, 1), -1)
        if c not in self._selectors:
            self._selectors[c] = FaissIndex.selector(self.ids[self.members[c]])
        _, ids = self.index.search_preassigned(
            xq, kc, np.take_along_axis(dis, order, 1), pick, self._selectors[c]
        )
        rows = np.searchsorted(self.ids, ids.clip(0))
        return np.where(ids >= 0, rows, -1)

    def _search_class(self, c: int, q: np.ndarray, coarse: tuple | None, nprobe=None):
        if coarse is None or len(self.members[c]) <= EXACT_CLASS_UP_TO:
            return self._exact_class(c, q)
        full = np.full(len(q), self.index.nprobe) if nprobe is None else nprobe
        return self._ivf_class(c, coarse, full)

    def _coarse(self, queries: np.ndarray, need: np.ndarray) -> tuple | None:
        use_ivf = self.index is not None and self.index.kind == "ivf"
        if use_ivf and (need & (self.sizes > EXACT_CLASS_UP_TO)).any():
            return self.index.coarse(queries)
        return None

    def _add(self, extra: np.ndarray, c: int, qs: np.ndarray, q, coarse, nprobe=None) -> None:
        sub = None if coarse is None else tuple(a[qs] for a in coarse)
        found = self._search_class(c, q[qs], sub, None if nprobe is None else nprobe[qs])
        width = extra.shape[1] // self.num_classes
        extra[qs[:, None], c * width + np.arange(found.shape[1])] = found

    def candidates(self, queries: np.ndarray, top_rows: np.ndarray) -> np.ndarray:
        """Candidate rows ``(B, K)`` (-1 = padding) for ``queries (B, D)`` float32, given the
        index's top-M rows ``top_rows (B, M)``."""
        b, k = len(queries), self.k
        self.searched = {"precise": 0, "cheap": 0}
        self.pruned = np.zeros((b, self.num_classes), dtype=bool)
        if k <= 0 or self.num_classes == 0:
            return unique_rows(top_rows)
        extra = np.full((b, self.num_classes * k * OVERFETCH), -1, np.int64)
        if not self.balanced:  # only the classes with too few anchors in the top-M
            counts = per_class_counts(top_rows, self.labels, self.num_classes)
            need = counts < np.minimum(k, self.sizes)
            coarse = self._coarse(queries, need)
            for c in np.flatnonzero(need.any(0)):
                self._add(extra, int(c), np.flatnonzero(need[:, c]), queries, coarse)
            return unique_rows(np.concatenate([top_rows, extra], axis=1))
        return self._balanced(queries, unique_rows(top_rows), extra)

    def _balanced(self, q: np.ndarray, top: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Module docstring: exact for small classes, the top-M for big classes complete there,
        the IVF (precisely where the bound lets the class win, else cheaply) for the rest."""
        b, k, n_cls = len(q), self.k, self.num_classes
        use_ivf = self.index is not None and self.index.kind == "ivf"
        big = (self.sizes > EXACT_CLASS_UP_TO) & use_ivf
        kc = np.minimum(k, self.sizes)
        everyone = np.arange(b)
        for c in np.flatnonzero(~big & (self.sizes > 0)):
            self._add(extra, int(c), everyone, q, None)
        rows = unique_rows(np.concatenate([top, extra], axis=1))
        rows, cos = keep_per_class(rows, cosines(q, self.embeddings, rows), self.labels, k)
        if not big.any():
            return rows
        lab = np.where(rows >= 0, self.labels[rows.clip(0)], 0)
        flat = (everyone[:, None] * n_cls + lab).ravel()
        valid = (rows >= 0).ravel()
        found = np.bincount(flat, valid, b * n_cls).reshape(b, n_cls)
        total = np.bincount(flat, np.where(rows >= 0, cos, 0).ravel(), b * n_cls)
        total = total.reshape(b, n_cls)
        complete = found >= kc
        score = np.where(complete & (kc > 0), total / kc.clip(1), -np.inf)
        best = score.max(1)  # the best class whose k nearest are all known
        top_cos = cosines(q, self.embeddings, top)
        s_m = np.where(top >= 0, top_cos, np.inf).min(1)
        s_m = np.where(np.isfinite(s_m), s_m, 1.0)  # no top-M: anything may be nearer
        bound = (total + (kc - found) * s_m[:, None]) / kc.clip(1)
        # the classes that may win: a complete one may still miss anchors the index missed
        contender = big & (np.where(complete, score, bound) >= best[:, None] - BOUND_MARGIN)
        cheap = big & ~complete & ~contender
        todo = contender | cheap
        self.searched = {"precise": int(contender.sum()), "cheap": int(cheap.sum())}
        self.pruned = cheap
        if not todo.any():
            return rows
        coarse = self.index.coarse(q)
        more = np.full((b, n_cls * k * OVERFETCH), -1, np.int64)
        wide = int(self.index.nprobe * PRECISE_NPROBE_FACTOR)
        for c in np.flatnonzero(todo.any(0)):
            nprobe = np.where(contender[:, c], wide, CHEAP_NPROBE)
            self._add(more, int(c), np.flatnonzero(todo[:, c]), q, coarse, nprobe)
        rows = unique_rows(np.concatenate([rows, more], axis=1))
        rows, _ = keep_per_class(rows, cosines(q, self.embeddings, rows), self.labels, k)
        return rows
