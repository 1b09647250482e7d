"""Consensus classification and nearest-anchor search against an :class:`AnchorBank`.

For each query embedding (DESIGN.md, "Anchor bank"):

1. the FAISS index gives the ``top_m`` nearest anchors;
2. every class of the bank with fewer than ``min(per_class_k, class size)`` anchors among them
   adds its own ``per_class_k`` nearest anchors (:mod:`.shortlist`: exact for small classes,
   through the IVF lists that hold the class for large ones, precisely only where a bound on its
   consensus score lets it win); with ``bank.shortlist=balanced`` (the default) each class then
   keeps exactly its ``min(per_class_k, size)`` nearest, so mean and top-k aggregation do not
   depend on class size;
3. the pair heads score the query against all its candidates in ONE batched call
   (queries x candidates, padding labelled -1 so the consensus ignores it);
4. ``model.consensus`` aggregates per class into g, which therefore covers every class;
5. g is scaled by the bank's temperature (:mod:`.calibration`) when ``bank calibrate`` stored one.

With ``bank.score_all_anchors`` every anchor is a candidate (steps 1-2 are skipped): the exact
consensus, unbiased across class sizes with ``model.aggregate=mean``.

Reported per anchor: ``similarity`` = cosine of the unit-norm embeddings (computed exactly, even
when the index is approximate) and ``pair_probability`` = (h1 + h2) / 2, the mean of the two gate
probabilities that anchor and query show the same class.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import BankError
from ..models.adapt import adapt_prototypes
from .bank import AnchorBank
from .calibration import apply_temperature, bank_temperature
from .faiss_index import as_matrix
from .shortlist import Shortlist, cosines

UNCERTAIN = "uncertain"


@dataclass
class Classification:
    """Results for B queries over the C classes of a bank.

    Attributes:
        classes: the bank's classes (columns of ``probabilities``).
        probabilities: g, ``(B, C)`` float32; each row sums to 1 (scaled by ``temperature``).
        top: ``(B,)`` index of the most probable class.
        predictions: class code, or ``"uncertain"`` when the top probability < ``abstain_below``.
        support: per query, the top class's candidate anchors, best pair probability first:
            ``{"path", "label", "similarity", "pair_probability"}``.
        timing: seconds spent in ``search_s`` (FAISS + per-class exact search), ``heads_s`` (pair
            heads + consensus) and ``total_s``.
        num_candidates: ``(B,)`` candidates scored per query.
        temperature: the temperature g was scaled by (1.0: the model's own g).
    """

    classes: list[str]
    probabilities: np.ndarray
    top: np.ndarray
    predictions: list[str]
    support: list[list[dict[str, Any]]]
    timing: dict[str, float] = field(default_factory=dict)
    num_candidates: np.ndarray | None = None
    temperature: float = 1.0

    def with_temperature(self, temperature: float, abstain_below: float) -> Classification:
        """The same calls with the model's own g (this result must hold it: ``temperature``
        1.0) scaled by ``temperature`` and "uncertain" decided again at ``abstain_below``; the
        top classes and supporting anchors do not change."""
        if self.temperature != 1.0:
            raise ValueError(f"g is already scaled by temperature {self.temperature}")
        p = apply_temperature(self.probabilities, temperature)
        return dataclasses.replace(
            self,
            probabilities=p,
            predictions=_predictions(p, self.top, self.classes, abstain_below),
            temperature=float(temperature),
        )

    def records(self, paths: list[str]) -> list[dict[str, Any]]:
        """One dict per query in the classify-jsonl shape."""
        return [
            {
                "path": str(p),
                "prediction": pred,
                "probabilities": {c: float(v) for c, v in zip(self.classes, prob, strict=True)},
                "anchors": sup,
            }
            for p, pred, prob, sup in zip(
                paths, self.predictions, self.probabilities, self.support, strict=True
            )
        ]


def _predictions(
    p: np.ndarray, top: np.ndarray, classes: list[str], abstain_below: float
) -> list[str]:
    return [UNCERTAIN if p[i, t] < abstain_below else classes[t] for i, t in enumerate(top)]


def gather_candidates(
    queries: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    top_rows: np.ndarray,
    per_class_k: int,
    balanced: bool = False,
) -> np.ndarray:
    """Candidate anchor rows ``(B, K)`` (-1 = padding) for queries ``(B, D)`` by exact search:
    the top-M rows ``top_rows (B, M)`` plus the ``per_class_k`` nearest anchors of each class
    with fewer among them; ``balanced`` keeps exactly each class's ``per_class_k`` nearest
    (:class:`.shortlist.Shortlist`)."""
    ids = np.arange(len(embeddings), dtype=np.int64)
    sl = Shortlist(None, embeddings, labels, ids, num_classes, per_class_k, balanced)
    return sl.candidates(queries, top_rows)


def bank_shortlist(bank: AnchorBank, per_class_k: int) -> Shortlist:
    """The shortlist of ``bank`` (class-balanced unless ``bank.shortlist=top_m``)."""
    return Shortlist(
        bank.index,
        bank.embeddings,
        bank.labels,
        bank.ids,
        len(bank.classes),
        per_class_k,
        balanced=bank.bank_config.shortlist == "balanced",
    )


def bank_prototypes(bank: AnchorBank) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The class prototypes over all of the bank's anchors, when the model aggregates by
    prototype (``model.aggregate=proto``), adapted to the bank when ``bank.adapt_steps`` > 0
    (:func:`~siamese_marrow.models.adapt.adapt_prototypes`; on the anchors' view embeddings with
    ``bank.adapt_on=views``; several a class with ``bank.prototypes_per_class``); else None.
    Once per set of queries (:func:`bank_scoring`)."""
    model = bank.model
    if not model.uses_prototypes:
        return None
    device = next(model.parameters()).device
    return adapt_prototypes(
        model,
        torch.from_numpy(np.asarray(bank.embeddings, dtype=np.float32)).to(device),
        torch.from_numpy(bank.labels).to(device),
        len(bank.classes),
        steps=bank.bank_config.adapt_steps,
        lr=bank.bank_config.adapt_lr,
        views=None if bank.views is None else torch.from_numpy(bank.views).to(device),
        prototypes_per_class=bank.bank_config.prototypes_per_class,
    )


@torch.no_grad()
def score_candidates(
    bank: AnchorBank,
    queries: np.ndarray,
    rows: np.ndarray,
    prototypes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair heads on queries ``(B, D)`` x candidate rows ``(B, K)`` in one batched call.

    Returns ``g (B, C)``, ``pair_probability (B, K)`` = (h1 + h2) / 2 and cosine ``(B, K)``
    (padding: label -1, ignored by the consensus; its scores are meaningless). With
    ``prototypes`` (:func:`bank_prototypes`) g comes from them and the candidates are the
    evidence only.
    """
    model = bank.model
    device = next(model.parameters()).device
    safe = rows.clip(0)
    cos = cosines(queries, bank.embeddings, rows)
    uniq, inverse = np.unique(safe, return_inverse=True)  # each anchor through the heads once
    local = np.where(rows >= 0, inverse.reshape(safe.shape), -1)
    g, h1, h2 = model.anchor_consensus(
        torch.from_numpy(np.asarray(bank.embeddings[uniq], dtype=np.float32)).to(device),
        torch.from_numpy(bank.labels[uniq]).to(device),
        torch.from_numpy(queries).to(device),
        len(bank.classes),
        rows=torch.from_numpy(local).to(device),
        prototypes=prototypes,
    )
    pair = ((h1 + h2) / 2).float().cpu().numpy()
    return g.float().cpu().numpy(), pair, np.where(rows >= 0, cos, 0).astype(np.float32)


def _anchor(bank: AnchorBank, row: int, sim: float, pair: float) -> dict[str, Any]:
    a = bank.anchors[row]
    return {
        "path": a["path"],
        "label": a["label"],
        "similarity": round(float(sim), 6),
        "pair_probability": round(float(pair), 6),
    }


@dataclass(frozen=True)
class Scoring:
    """What :func:`classify` derives from the bank whatever the queries: the (adapted) class
    prototypes (:func:`bank_prototypes`) and the shortlist. Made once for all the query chunks
    of one set (:func:`bank_scoring`); only valid while the bank is unchanged."""

    prototypes: tuple[torch.Tensor, torch.Tensor] | None
    shortlist: Shortlist


def _require_anchors(bank: AnchorBank) -> None:
    if len(bank) == 0:
        raise BankError("the bank holds no anchors; add some with bank add")


def _shortlist_k(bank: AnchorBank, per_class_k: int | None) -> int:
    cfg = bank.bank_config
    if cfg.score_all_anchors:
        return 0  # every anchor is already a candidate
    return cfg.per_class_k if per_class_k is None else per_class_k


def bank_scoring(bank: AnchorBank, per_class_k: int | None = None) -> Scoring:
    """The :class:`Scoring` of ``bank`` for ``per_class_k`` (default ``bank.per_class_k``)."""
    _require_anchors(bank)
    shortlist = bank_shortlist(bank, _shortlist_k(bank, per_class_k))
    return Scoring(bank_prototypes(bank), shortlist)


def _top_rows(bank: AnchorBank, q: np.ndarray, top_m: int) -> np.ndarray:
    """Bank rows of the ``top_m`` nearest anchors of each query (every row when the bank scores
    all anchors; none when ``top_m`` is 0)."""
    m = min(max(top_m, 0), len(bank))
    if bank.bank_config.score_all_anchors:
        return np.broadcast_to(np.arange(len(bank)), (len(q), len(bank)))
    if m == 0:
        return np.zeros((len(q), 0), np.int64)
    _, ids = bank.index.search(q, m)
    return bank.rows_of_ids(ids)


def _support(
    bank: AnchorBank,
    rows: np.ndarray,
    top: np.ndarray,
    pair: np.ndarray,
    cos: np.ndarray,
    n_support: int,
) -> list[list[dict[str, Any]]]:
    """The ``n_support`` candidates of each query's top class with the highest pair score."""
    cand_labels = np.where(rows >= 0, bank.labels[rows.clip(0)], -1)
    rank = np.where(cand_labels == top[:, None], pair, -np.inf)
    order = np.argsort(-rank, axis=1, kind="stable")[:, :n_support]
    return [
        [
            _anchor(bank, int(rows[i, j]), cos[i, j], pair[i, j])
            for j in order[i]
            if np.isfinite(rank[i, j])
        ]
        for i in range(len(rows))
    ]


def classify(
    bank: AnchorBank,
    queries: np.ndarray,
    top_m: int | None = None,
    per_class_k: int | None = None,
    abstain_below: float | None = None,
    n_support: int = 5,
    chunk: int = 64,
    temperature: float | None = None,
    scoring: Scoring | None = None,
) -> Classification:
    """Consensus class probabilities of query embeddings ``(B, D)`` over every bank class.

    ``top_m``, ``per_class_k``, ``abstain_below`` default to the bank's ``bank_config``;
    ``temperature`` to the one in the bank's manifest (``bank calibrate``; 1.0 when none).
    ``per_class_k >= 1`` guarantees that every class gets a probability; 0 scores only the top-M.
    Queries are processed ``chunk`` at a time (memory ~ chunk x candidates x D floats). The
    supporting anchors are given for the top class even when the prediction is "uncertain".
    ``scoring``: the bank's :func:`bank_scoring` for this ``per_class_k``, when one set of
    queries is classified in several calls (made here when not given).
    """
    cfg = bank.bank_config
    top_m = cfg.top_m if top_m is None else top_m
    per_class_k = cfg.per_class_k if per_class_k is None else per_class_k
    abstain_below = cfg.abstain_below if abstain_below is None else abstain_below
    temperature = bank_temperature(bank) if temperature is None else float(temperature)
    _require_anchors(bank)
    if top_m <= 0 and per_class_k <= 0:
        raise ValueError(f"top_m={top_m} and per_class_k={per_class_k}: at least one must be >= 1")
    q_all = as_matrix(queries, bank.dim, "queries")
    n_cls = len(bank.classes)
    t_total = time.perf_counter()
    t_search = t_heads = 0.0
    probs, counts, support = [], [], []
    scoring = scoring or bank_scoring(bank, per_class_k)
    if scoring.shortlist.k != _shortlist_k(bank, per_class_k):
        raise ValueError(
            f"scoring was made for per_class_k={scoring.shortlist.k}, not {per_class_k}"
        )
    protos, shortlist = scoring.prototypes, scoring.shortlist
    for start in range(0, len(q_all), chunk):
        q = q_all[start : start + chunk]
        t0 = time.perf_counter()
        rows = shortlist.candidates(q, _top_rows(bank, q, top_m))
        t1 = time.perf_counter()
        g, pair, cos = score_candidates(bank, q, rows, protos)
        t_search += t1 - t0
        t_heads += time.perf_counter() - t1
        support.extend(_support(bank, rows, g.argmax(1), pair, cos, n_support))
        probs.append(g)
        counts.append((rows >= 0).sum(1))
    p = np.concatenate(probs) if probs else np.zeros((0, n_cls), np.float32)
    top = p.argmax(1) if len(p) else np.zeros(0, np.int64)
    p = apply_temperature(p, temperature)
    preds = _predictions(p, top, bank.classes, abstain_below)
    timing = {"search_s": t_search, "heads_s": t_heads, "total_s": time.perf_counter() - t_total}
    return Classification(
        list(bank.classes),
        p.astype(np.float32),
        top,
        preds,
        support,
        timing,
        np.concatenate(counts) if counts else np.zeros(0, np.int64),
        temperature,
    )


@torch.no_grad()
def search(bank: AnchorBank, queries: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
    """The ``k`` nearest anchors of each query ``(B, D)`` by the bank's index, nearest first:
    ``{"path", "label", "similarity", "pair_probability"}`` (cosine and (h1 + h2) / 2)."""
    q = as_matrix(queries, bank.dim, "queries")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if len(bank) == 0:
        return [[] for _ in range(len(q))]
    _, ids = bank.index.search(q, min(k, len(bank)))
    rows = bank.rows_of_ids(ids)
    _, pair, cos = score_candidates(bank, q, rows)  # the found anchors only
    return [
        [_anchor(bank, int(r), cos[i, j], pair[i, j]) for j, r in enumerate(rows[i]) if r >= 0]
        for i in range(len(q))
    ]
