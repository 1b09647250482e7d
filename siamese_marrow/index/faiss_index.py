"""A thin class over one FAISS index: the only place in the package that imports faiss.

Vectors go in and come out as numpy ``float32``; ids are ``int64``. The index is built from a
FAISS factory string ("Flat" exact, "HNSW32", "IVF1024,Flat", "IVF1024,PQ32", ...) and holds the
caller's ids: IVF indexes store them in their inverted lists (and remove by id natively); every
other type is wrapped in an ``IDMap2``. An ``IDMap2`` must not wrap an IVF index: IVF
``remove_ids`` compacts each inverted list on its own, while the id map assumes the wrapped index
shifts every later vector down by one, so after a removal ids and vectors no longer match.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from ..errors import FaissIndexError, IndexTrainingError, RemoveUnsupported
from ..utils import atomic_write_bytes

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def set_num_threads(n: int) -> None:
    """FAISS's OpenMP thread count (process-wide; ``n <= 0`` leaves it as is). On a busy shared
    machine, 1 thread avoids OpenMP oversubscription, which can make one search 100x slower."""
    if n > 0:
        faiss.omp_set_num_threads(int(n))


def min_train_size(factory: str) -> int:
    """Fewest training vectors FAISS accepts for ``factory`` (0 when it needs no training).

    IVF<nlist> needs ``nlist`` vectors (one per centroid); PQ<m>[x<nbits>] needs ``2**nbits``
    (default 256) per sub-quantizer codebook. FAISS warns below 39 vectors per centroid.
    """
    need = 0
    for m in re.finditer(r"IVF(\d+)", factory):
        need = max(need, int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        need = max(need, 2 ** int(m.group(2) or 8))
    return need


def as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(N, dim)`` array, or a clear error naming ``what``."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what}: expected an array of shape (N, {dim}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{what}: expected floating-point vectors, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids: expected {n} integers of shape ({n},), got {ids.dtype} {ids.shape}")
    return np.ascontiguousarray(ids, dtype=np.int64)


class FaissIndex:
    """A FAISS index with caller-chosen int64 ids.

    ``add`` trains an untrained index (IVF, PQ) on the first vectors it is given; ``search``
    returns ``(sims (B, k) float32, ids (B, k) int64)``, best first, padded with id ``-1`` when the
    index holds fewer than ``k`` vectors (or an approximate index finds fewer). With
    ``metric="ip"`` on unit vectors, ``sims`` are cosine similarities; with ``"l2"`` they are
    squared distances (smaller is closer).
    """

    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        if dim < 1:
            raise ValueError(f"dim={dim} must be >= 1")
        try:
            index = faiss.index_factory(int(dim), factory, METRICS[metric])
            if faiss.try_extract_index_ivf(index) is None:
                index = faiss.index_factory(int(dim), f"IDMap2,{factory}", METRICS[metric])
        except RuntimeError as e:
            raise FaissIndexError(
                f"bank.index={factory!r} is not a FAISS factory string FAISS accepts "
                f"({_faiss_message(e)}); try Flat, HNSW32, IVF1024,Flat or IVF1024,PQ32"
            ) from None
        _skip_polysemous_training(index)
        self._init(index, factory, metric)

    def _init(self, index: faiss.Index, factory: str, metric: str) -> None:
        self.index = index
        self.factory = factory
        self.metric = metric
        self.dim = int(index.d)
        #: an IDMap2 around an IVF index, as versions before 0.2 wrote it: its ids are only right
        #: until the first removal, so :meth:`refill` it from the vectors it should hold
        self.needs_refill = isinstance(index, faiss.IndexIDMap2) and self._ivf_or_none() is not None
        ids = self.ids()
        self._next_id = int(ids.max()) + 1 if len(ids) else 0

    # --- size and state -------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def ids(self) -> np.ndarray:
        """The ids held, ``(ntotal,)`` int64: in insertion order, or list by list for IVF."""
        if isinstance(self.index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self._ivf("ids").invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).astype(np.int64)
            for i in range(lists.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def nbytes(self) -> int:
        """Size of the serialised index in bytes (what ``save`` writes)."""
        return len(self.to_bytes())

    # --- building -------------------------------------------------------------------------------
    def train(self, x: np.ndarray) -> None:
        """Train IVF centroids / PQ codebooks on ``x (N, D)``; refused with the numbers if N is
        below what the factory string needs."""
        x = as_matrix(x, self.dim, "train")
        need = min_train_size(self.factory)
        if len(x) < need:
            raise IndexTrainingError(
                f"index {self.factory!r} needs at least {need} vectors to train, got {len(x)}; "
                f"use Flat or HNSW32, or fewer IVF lists (about sqrt(N) = {int(len(x) ** 0.5)})"
            )
        try:
            self.index.train(x)
        except RuntimeError as e:
            raise IndexTrainingError(
                f"index {self.factory!r} could not be trained on {len(x)} vectors: "
                f"{_faiss_message(e)}"
            ) from None

    def add(self, x: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Add ``x (N, D)`` under ``ids (N,)`` (default: consecutive new ids); returns the ids.

        An untrained index is first trained on ``x``.
        """
        x = as_matrix(x, self.dim, "add")
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        ids = _as_ids(ids, len(x))
        if len(x) == 0:
            return ids
        if not self.is_trained:
            self.train(x)
        self.index.add_with_ids(x, ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors with these ids; returns how many were removed.

        Raises :class:`RemoveUnsupported` for index types that cannot remove (HNSW).
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) == 0:
            return 0
        try:
            return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError as e:
            raise RemoveUnsupported(
                f"index {self.factory!r} cannot remove vectors ({_faiss_message(e)}); "
                "rebuild it from the vectors to keep"
            ) from None

    def reset(self) -> None:
        """Drop every vector (training is kept)."""
        self.index.reset()

    def refill(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Hold exactly ``x (N, D)`` under ``ids (N,)``, keeping the training (IVF centroids, PQ
        codebooks); an IDMap2 around an IVF index (:attr:`needs_refill`) is unwrapped first."""
        if self.needs_refill:
            inner = faiss.downcast_index(self.index.index)
            self.index = faiss.clone_index(inner)
            self.needs_refill = False
        self.index.reset()
        self.add(x, ids)

    # --- searching ------------------------------------------------------------------------------
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``q (B, D)`` -> ``(sims (B, k) float32, ids (B, k) int64)``; missing results get id -1
        (and sim -inf for ``ip``, +inf for ``l2``)."""
        q = as_matrix(q, self.dim, "search")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        if len(q) == 0 or self.ntotal == 0:
            fill = -np.inf if self.metric == "ip" else np.inf
            return (
                np.full((len(q), k), fill, np.float32),
                np.full((len(q), k), -1, np.int64),
            )
        sims, ids = self.index.search(q, int(k))
        sims = sims.astype(np.float32, copy=False)
        missing = ids < 0
        if missing.any():
            sims[missing] = -np.inf if self.metric == "ip" else np.inf
        return sims, ids.astype(np.int64, copy=False)

    @property
    def nprobe(self) -> int:
        """IVF lists visited per query (IVF indexes only)."""
        return int(self._ivf("nprobe").nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._ivf("nprobe").nprobe = int(value)

    @property
    def efSearch(self) -> int:  # noqa: N802 - the FAISS name
        """HNSW search breadth (HNSW indexes only)."""
        return int(self._hnsw("efSearch").hnsw.efSearch)

    @efSearch.setter
    def efSearch(self, value: int) -> None:  # noqa: N802
        self._hnsw("efSearch").hnsw.efSearch = int(value)

    @property
    def kind(self) -> str:
        """``"ivf"``, ``"hnsw"`` or ``"flat"`` (anything else searched exhaustively)."""
        if self._ivf_or_none() is not None:
            return "ivf"
        inner = self.index
        if isinstance(inner, faiss.IndexIDMap2):
            inner = faiss.downcast_index(inner.index)
        return "hnsw" if hasattr(inner, "hnsw") else "flat"

    @property
    def nlist(self) -> int:
        return int(self._ivf("nlist").nlist)

    @property
    def search_params(self) -> dict[str, int]:
        """``{"nprobe": n}`` (IVF), ``{"efSearch": n}`` (HNSW) or ``{}``."""
        kind = self.kind
        return (
            {"nprobe": self.nprobe}
            if kind == "ivf"
            else ({"efSearch": self.efSearch} if kind == "hnsw" else {})
        )

    def set_search_params(self, params: dict[str, int]) -> None:
        for name, value in (params or {}).items():
            if name not in ("nprobe", "efSearch"):
                raise ValueError(f"unknown search parameter {name!r} (nprobe, efSearch)")
            setattr(self, name, int(value))

    def list_ids(self) -> list[np.ndarray]:
        """IVF only: the ids in each inverted list, ``[(size_i,) int64 for i in range(nlist)]``."""
        lists = self._ivf("list_ids").invlists
        return [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).astype(np.int64)
            if lists.list_size(i)
            else np.zeros(0, np.int64)
            for i in range(lists.nlist)
        ]

    def coarse(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IVF only: queries ``(B, D)`` as the IVF sees them (after any OPQ rotation) and every
        list ranked for each: ``(q', sims (B, nlist), lists (B, nlist))``, nearest first."""
        ivf = self._ivf("coarse")
        x = as_matrix(q, self.dim, "coarse")
        if isinstance(self.index, faiss.IndexPreTransform):
            for i in range(self.index.chain.size()):
                x = np.ascontiguousarray(self.index.chain.at(i).apply_py(x), dtype=np.float32)
        dis, lists = ivf.quantizer.search(x, ivf.nlist)
        return x, dis, lists

    @staticmethod
    def selector(ids: np.ndarray) -> object:
        """A FAISS id selector for ``ids`` (keep a reference while it is used): a bitmap over
        the id range (one bit test per scanned vector) when that is no bigger than 1 MiB or
        twice the ids themselves, else a hashed set."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) and ids.min() >= 0 and ids.max() // 8 < max(2**20, 16 * len(ids)):
            bits = np.zeros(int(ids.max()) // 8 + 1, np.uint8)
            np.bitwise_or.at(bits, ids // 8, (1 << (ids % 8)).astype(np.uint8))
            sel = faiss.IDSelectorBitmap(bits)
            sel.bitmap_ref = bits  # the selector reads the array: keep it alive
            return sel
        return faiss.IDSelectorBatch(ids)

    def search_preassigned(
        self, xq: np.ndarray, k: int, dis: np.ndarray, lists: np.ndarray, sel: object
    ) -> tuple[np.ndarray, np.ndarray]:
        """IVF only: top-``k`` of ``xq`` (from :meth:`coarse`) in the given lists ``(B, P)``
        (-1 = none; ``dis`` their centroid similarities) among the ids ``sel`` admits (-1 ids and
        -inf sims where fewer are found)."""
        ivf = self._ivf("search_preassigned")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        dis = np.ascontiguousarray(dis, dtype=np.float32)
        n, p = lists.shape
        sims = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        if n == 0 or p == 0:
            return sims, ids
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(p))
        # the Python wrapper refuses params; the C++ call takes them (selector and nprobe = P)
        sp = faiss.swig_ptr
        ivf.search_preassigned_c(
            n, sp(xq), int(k), sp(lists), sp(dis), sp(sims), sp(ids), False, params
        )
        sims = sims.astype(np.float32, copy=False)
        sims[ids < 0] = -np.inf
        return sims, ids.astype(np.int64, copy=False)

    def _ivf_or_none(self) -> faiss.IndexIVF | None:
        inner = self.index
        if isinstance(inner, faiss.IndexIDMap2):
            inner = faiss.downcast_index(inner.index)
        return faiss.try_extract_index_ivf(inner)

    def _ivf(self, what: str) -> faiss.IndexIVF:
        ivf = self._ivf_or_none()
        if ivf is None:
            raise ValueError(f"{what} applies to IVF indexes; this index is {self.factory!r}")
        return ivf

    def _hnsw(self, what: str) -> faiss.IndexHNSW:
        inner = self.index
        if isinstance(inner, faiss.IndexIDMap2):
            inner = faiss.downcast_index(inner.index)
        if not hasattr(inner, "hnsw"):
            raise ValueError(f"{what} applies to HNSW indexes; this index is {self.factory!r}")
        return inner

    # --- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically (temporary file, fsync, rename)."""
        # serialised in memory, written by Python: a full disk is an OSError naming the file
        atomic_write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The serialised index (what :meth:`save` writes)."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def load(cls, path: str | Path, factory: str = "", metric: str | None = None) -> FaissIndex:
        """Read an index written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FaissIndexError(f"index file {path} does not exist")
        return cls.from_bytes(path.read_bytes(), factory, metric, where=str(path))

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray,
        factory: str = "",
        metric: str | None = None,
        where: str = "index",
    ) -> FaissIndex:
        """An index from the bytes :meth:`to_bytes` gave (``where`` names them in errors)."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as e:
            raise FaissIndexError(
                f"{where} is not a readable FAISS index ({_faiss_message(e)})"
            ) from None
        # read_index gives the concrete type (and owns it: a downcast_index copy of the proxy
        # would outlive the object it points to)
        if not isinstance(index, faiss.IndexIDMap2) and faiss.try_extract_index_ivf(index) is None:
            raise FaissIndexError(f"{where} holds a FAISS index without an id map; rebuild it")
        if metric is None:
            metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        obj = cls.__new__(cls)
        obj._init(index, factory, metric)
        return obj


def _skip_polysemous_training(index: faiss.Index) -> None:
    """PQ indexes from the factory train polysemous codes by default: slow (tens of seconds on a
    few thousand vectors) and only used by polysemous (Hamming-filtered) search, which we do not
    enable. Turn it off."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    ivf = faiss.try_extract_index_ivf(inner)
    for candidate in (inner, faiss.downcast_index(ivf) if ivf is not None else None):
        if candidate is not None and hasattr(candidate, "do_polysemous_training"):
            candidate.do_polysemous_training = False


def _faiss_message(e: Exception) -> str:
    """The useful last part of a FAISS C++ error message."""
    text = str(e).strip()
    for marker in ("Error: ", "failed: "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    text = re.split(r"\.(?:cpp|h):\d+: ", text)[-1]  # drop "Error in <C++ signature> at file:line"
    return text.splitlines()[0] if text else type(e).__name__
