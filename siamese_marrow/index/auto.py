"""``bank.index=auto``: which FAISS index a bank gets, and its search breadth.

:func:`choose_index` is a rule in the spirit of autofaiss's: exact ``Flat`` while it is cheap
(up to :data:`EXACT_UP_TO` anchors); then, with ``nlist`` about ``4 sqrt(N)`` (a power of two,
at least 39 training vectors per list), ``HNSW32`` (only when anchors need not be removable) or
``IVF,Flat``; once the stored embeddings are float16 or the budget is tight, the compressed
``IVF,SQfp16``, ``IVF,SQ8`` and finally ``OPQm,IVF,PQm`` with the largest ``m`` the budget
allows. The budget covers the index plus the embeddings the bank stores beside it
(:func:`embedding_dtype`). :func:`tune` then sets ``nprobe`` / ``efSearch`` to the smallest value
whose recall@k against exact search, on a seeded sample of the bank's own anchors as queries
(each query's own id left out), reaches the target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..config import BankConfig, parse_size
from ..errors import BankError
from .faiss_index import FaissIndex

#: up to this many anchors, auto picks exact search (a 256-query batch then takes milliseconds)
EXACT_UP_TO = 50_000
#: from this many anchors (with ``bank.embeddings=auto``) the stored embeddings are float16
FLOAT16_FROM = 200_000
#: HNSW (when anchors need not be removable) up to this many anchors: building it beyond is slow
HNSW_UP_TO = 500_000
#: values tried by :func:`tune`
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)


@dataclass
class IndexChoice:
    """What auto chose: ``factory``, its estimated memory (index and stored embeddings, bytes),
    the rule's reason, and after :func:`tune` the search ``params`` and measured ``recall``."""

    factory: str
    num_anchors: int
    dim: int
    index_bytes: int
    embedding_bytes: int
    budget_bytes: int
    reason: str
    params: dict[str, int] = field(default_factory=dict)
    recall: float | None = None
    recall_k: int = 10
    tuned_on: int = 0

    @property
    def total_bytes(self) -> int:
        return self.index_bytes + self.embedding_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def embedding_dtype(n: int, setting: str = "auto") -> np.dtype:
    """dtype of the embeddings a bank of ``n`` anchors stores (``bank.embeddings``)."""
    if setting == "auto":
        return np.dtype(np.float16 if n >= FLOAT16_FROM else np.float32)
    return np.dtype(setting)


def auto_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest ``4 sqrt(n)``, with >= 39 per list."""
    nlist = 2 ** max(4, round(math.log2(max(4 * math.sqrt(max(n, 1)), 1))))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def estimate_bytes(factory: str, n: int, dim: int) -> int:
    """Approximate resident size of ``factory`` holding ``n`` vectors of ``dim`` (ids included)."""
    parts = factory.split(",")
    nlist = next((int(p[3:]) for p in parts if p.startswith("IVF")), 0)
    coarse = 4 * dim * nlist
    code = {"Flat": 4 * dim, "SQfp16": 2 * dim, "SQ8": dim, "SQ4": dim // 2}
    last = parts[-1]
    if nlist:
        if last.startswith("PQ"):
            m = int(last[2:].split("x")[0])
            opq = 4 * dim * dim if parts[0].startswith("OPQ") else 0
            return n * (m + 8) + coarse + opq + 256 * dim * 4
        return n * (code.get(last, 4 * dim) + 8) + coarse
    if factory.startswith("HNSW"):
        m = int(factory[4:].split(",")[0] or 32)
        return n * (4 * dim + 2 * m * 4 + 4 * m + 56)  # vectors, links (level 0 + upper), id map
    return n * (4 * dim + 56)  # Flat in an IDMap2 (ids and their reverse map)


def choose_index(n: int, dim: int, cfg: BankConfig) -> IndexChoice:
    """The index ``bank.index=auto`` gives a bank of ``n`` anchors of ``dim`` (see the module
    docstring); refused with the numbers when even the smallest choice exceeds the budget."""
    budget = parse_size(cfg.memory_budget)
    emb = n * dim * embedding_dtype(n, cfg.embeddings).itemsize
    fp16 = embedding_dtype(n, cfg.embeddings) == np.float16

    def made(factory: str, reason: str) -> IndexChoice:
        return IndexChoice(factory, n, dim, estimate_bytes(factory, n, dim), emb, budget, reason)

    def fits(factory: str) -> bool:
        return estimate_bytes(factory, n, dim) + emb <= budget

    if n <= EXACT_UP_TO and fits("Flat"):
        return made("Flat", f"{n} anchors <= {EXACT_UP_TO}: exact search is cheap")
    nlist = auto_nlist(n)
    if not cfg.removable and n <= HNSW_UP_TO and fits("HNSW32"):
        return made("HNSW32", "HNSW fits the budget (anchors need not be removable in place)")
    tried = []
    for code, why in (
        ("Flat", "full vectors fit the budget"),
        ("SQfp16", "half-precision codes fit the budget"),
        ("SQ8", "8-bit codes fit the budget"),
    ):
        factory = f"IVF{nlist},{code}"
        tried.append(factory)
        if code == "Flat" and fp16:
            continue  # the embeddings are already float16: store the index at that precision
        if fits(factory):
            return made(factory, why)
    for m in (64, 48, 32, 24, 16, 8, 4):
        if dim % m or m > dim:
            continue
        factory = f"OPQ{m},IVF{nlist},PQ{m}"
        tried.append(factory)
        if fits(factory):
            return made(factory, f"only {m}-byte product-quantizer codes fit the budget")
    need = min(estimate_bytes(f, n, dim) for f in tried) + emb
    raise BankError(
        f"bank.memory_budget={cfg.memory_budget} is too small for {n:,} anchors of dim {dim}: "
        f"the smallest index auto can choose ({tried[-1]}) with the stored embeddings "
        f"({emb / 1e9:.2f} GB) needs about {need / 1e9:.2f} GB; raise bank.memory_budget or "
        "give bank.index a FAISS factory string"
    )


def exact_neighbours(
    queries: np.ndarray, x: np.ndarray, k: int, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``x (N, D)`` (float32 or float16) by inner product for
    ``queries (B, D)``: ``(sims (B, k), rows (B, k))``, best first; ``x`` is read in chunks."""
    b = len(queries)
    k = min(k, len(x))
    best_s = np.full((b, 0), -np.inf, np.float32)
    best_r = np.zeros((b, 0), np.int64)
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start : start + chunk], dtype=np.float32)
        s = queries @ block.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_r = np.concatenate([best_r, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, keep, 1)
        best_r = np.take_along_axis(best_r, keep, 1)
    return best_s, best_r


def recall_without_self(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int) -> float:
    """Mean recall@k of ``found`` ids against ``truth`` ids (both ``(B, >= k+1)``), each query's
    own id ``own (B,)`` left out of both."""
    hits = 0
    for f, t, o in zip(found, truth, own, strict=True):
        f = f[(f != o) & (f >= 0)][:k]
        t = t[t != o][:k]
        hits += len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1)
    return hits / max(len(found), 1)


def tune(
    index: FaissIndex,
    x: np.ndarray,
    ids: np.ndarray,
    target: float,
    k: int = 10,
    n_queries: int = 200,
    seed: int = 0,
) -> tuple[dict[str, int], float | None, int]:
    """Smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose recall@k on ``n_queries`` seeded
    anchors of ``x (N, D)`` (ids ``ids (N,)``, as held by ``index``) reaches ``target``; the
    index is left set to it. Returns ``(params, recall, queries used)``; exact indexes get
    ``({}, None, 0)``, and when no value reaches the target the largest one tried is kept."""
    if index.kind == "flat" or len(x) <= k + 1:
        return {}, None, 0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), min(n_queries, len(x)), replace=False))
    q = np.asarray(x[rows], dtype=np.float32)
    _, truth_rows = exact_neighbours(q, x, k + 1)
    truth, own = ids[truth_rows], ids[rows]
    if index.kind == "ivf":
        name, values = "nprobe", [v for v in NPROBES if v <= index.nlist] or [index.nlist]
    else:
        name, values = "efSearch", list(EF_SEARCHES)
    recall = 0.0
    for value in values:
        setattr(index, name, value)
        _, found = index.search(q, k + 1)
        recall = recall_without_self(found, truth, own, k)
        if recall >= target:
            break
    return {name: int(getattr(index, name))}, round(float(recall), 4), len(rows)


def build_index(
    factory: str, x: np.ndarray, ids: np.ndarray, seed: int = 0, chunk: int = 65_536
) -> FaissIndex:
    """A ``factory`` index over ``x (N, D)`` (float32 or float16) under ``ids (N,)``: trained on
    a seeded sample (39 vectors per IVF list, as FAISS needs; more for PQ codebooks) and filled
    ``chunk`` rows at a time, so a float16 bank is never copied whole to float32."""
    index = FaissIndex(x.shape[1], factory, "ip")
    if len(x) and not index.is_trained:
        nlist = next((int(p[3:]) for p in factory.split(",") if p.startswith("IVF")), 0)
        size = min(len(x), max(39 * nlist, 64 * 256 if "PQ" in factory else 0, 1))
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))
        index.train(np.asarray(x[rows], dtype=np.float32))
    for start in range(0, len(x), chunk):
        index.add(
            np.asarray(x[start : start + chunk], dtype=np.float32), ids[start : start + chunk]
        )
    return index


def rechoose_due(choice: IndexChoice | None, n: int, factor: float) -> bool:
    """Whether a bank of ``n`` anchors chosen for ``choice.num_anchors`` should choose again."""
    if choice is None:
        return n > 0
    before = max(choice.num_anchors, 1)
    return n >= before * factor or n * factor <= before


def choice_from_dict(data: dict[str, Any] | None) -> IndexChoice | None:
    if not data:
        return None
    known = {f for f in IndexChoice.__dataclass_fields__}
    return IndexChoice(**{k: v for k, v in data.items() if k in known})
