"""The anchor bank: labelled reference embeddings in a FAISS index, saved as one directory.

Layout of a bank directory (every file listed with its sha256 in ``manifest.json``)::

    BANK/index.faiss       the FAISS index (ids = anchor ids)
    BANK/embeddings.npy    (N, D) float32 (float16 in large banks, bank.embeddings), unit-norm
                           rows, in anchor order (read without pickle, and without a copy)
    BANK/anchors.json      [{"id": int, "path": str, "label": str}, ...], same order
    BANK/config.yaml       the resolved config of the run the bank was built with
    BANK/views.npy         (N, 8, D) float16, each anchor's 8 dihedral-view embeddings; only in
                           a bank with bank.adapt_on=views (the prototypes adapt on them)
    BANK/manifest.json     model identity, index factory (and auto's choice, its memory and
                           measured recall), classes with counts, file hashes

The manifest records the run (path and checkpoint) and the sha256 of its weights and config, so a
bank is only ever queried with the model that embedded it: :meth:`AnchorBank.load` refuses any
other. The embeddings matrix is kept beside the index so that each class's exact nearest anchors
can be found and the index rebuilt after anchors are removed. This module holds the bank's state
and files only; :mod:`.classify` queries a bank (classify, search).

Saving and loading go through :mod:`.store`: a writer holds the bank's lock and swaps a complete
new copy into place, so a process killed at any moment leaves a loadable bank; readers take no
lock, change nothing, and always see the files of one save.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BankConfig, save_config
from ..data.datasets import Sample, check_labels
from ..errors import BankError, DataError
from ..models import SiameseNet
from ..models.checkpoint import LoadedRun
from ..models.embed import embed_paths_and_views
from ..utils import sha256_file
from .auto import (
    IndexChoice,
    build_index,
    choice_from_dict,
    choose_index,
    embedding_dtype,
    rechoose_due,
    tune,
)
from .bankfiles import (
    BANK_FILES,
    FORMAT,
    FORMAT_VERSION,
    VIEWS_FILE,
    check_manifest,
    check_model,
    check_target,
    durable_file,
    load_model_of,
    npy_from_bytes,
    views_from_bytes,
    write_file,
)
from .faiss_index import FaissIndex, RemoveUnsupported
from .store import MANIFEST, read_snapshot, replace_directory, writer_lock


class AnchorBank:
    """Labelled anchors: ``embeddings (N, D)``, ``anchors`` metadata and a FAISS ``index``.

    Anchor ids are unique, increasing with insertion and never reused, so the rows of
    ``embeddings`` are sorted by id. ``classes`` is the sorted list of labels present; ``labels``
    gives each anchor's index into it.
    """

    def __init__(self, run: LoadedRun, factory: str | None = None) -> None:
        self.run = run
        self.model: SiameseNet = run.model
        self.config = copy.deepcopy(run.cfg)
        if factory:
            self.config.bank.index = factory
        #: "auto" or the factory string asked for; ``factory`` is the index in use
        self.requested = self.config.bank.index
        self.factory = "Flat" if self.requested == "auto" else self.requested
        self.choice: IndexChoice | None = None  # what auto chose (bank.index=auto)
        self.index = FaissIndex(self.model.dim, self.factory, "ip")
        self.embeddings = np.zeros((0, self.model.dim), np.float32)
        #: ``(N, 8, D)`` float16 view embeddings of the anchors when bank.adapt_on=views, else None
        self.views: np.ndarray | None = (
            np.zeros((0, 8, self.model.dim), np.float16) if self.keeps_views else None
        )
        self.anchors: list[dict[str, Any]] = []
        self.next_id = 0
        self.calibration: dict[str, Any] = {}  # {"temperature": T, ...} (index.calibration)
        self._refresh()

    # --- views ----------------------------------------------------------------------------------
    @property
    def bank_config(self) -> BankConfig:
        """top_m, per_class_k, abstain_below (and the index factory) used by ``classify``."""
        return self.config.bank

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def keeps_views(self) -> bool:
        """Whether the bank keeps each anchor's 8 view embeddings (bank.adapt_on=views)."""
        return self.config.bank.adapt_on == "views"

    def __len__(self) -> int:
        return len(self.anchors)

    def _refresh(self) -> None:
        names = [a["label"] for a in self.anchors]
        self.classes: list[str] = sorted(set(names))
        lookup = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([lookup[n] for n in names], dtype=np.int64)
        self.ids = np.array([a["id"] for a in self.anchors], dtype=np.int64)
        self._paths = {a["path"] for a in self.anchors}

    def class_counts(self) -> dict[str, int]:
        counts = Counter(a["label"] for a in self.anchors)
        return {c: counts[c] for c in self.classes}

    def rows_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``embeddings`` for anchor ids (any shape); ``-1`` stays ``-1``."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        ok = (ids >= 0) & (len(self.ids) > 0)
        if len(self.ids):
            ok &= self.ids[rows] == ids
        return np.where(ok, rows, -1)

    # --- building -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        loaded_run: LoadedRun,
        samples: Sequence[Sample],
        batch_size: int = 64,
        num_workers: int = 0,
        factory: str | None = None,
        progress: bool = False,
    ) -> AnchorBank:
        """Embed every sample with the run's model and index it (``factory`` defaults to the
        run's ``bank.index``)."""
        bank = cls(loaded_run, factory)
        bank.add(samples, batch_size=batch_size, num_workers=num_workers, progress=progress)
        return bank

    def add(
        self,
        items: Sequence[Sample | str | Path],
        label: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed images with the bank's model and add them; returns their anchor ids ``(n,)``.

        ``items`` are :class:`Sample` (their own labels, unless ``label`` is given) or paths
        (``label`` required). New labels become new classes at once: that is few-shot.
        """
        paths: list[str] = []
        labels: list[str] = []
        for it in items:
            if isinstance(it, Sample):
                paths.append(it.path)
                labels.append(label or it.label)
            else:
                if not label:
                    raise BankError("adding image paths needs a label (e.g. --label ABE)")
                paths.append(str(it))
                labels.append(label)
        if not paths:
            raise BankError("no images to add")
        paths = [str(Path(p).absolute()) for p in paths]
        self._check_new_paths(paths)
        _check_labels(labels)  # before the embedding work
        emb, views, _ = embed_paths_and_views(
            self.model,
            paths,
            batch_size,
            num_workers,
            progress,
            desc="bank",
            tta=self.config.bank.tta,
            views=self.keeps_views,
        )
        return self.add_embeddings(emb, paths, labels, views=views)

    def _check_new_paths(self, paths: Sequence[str]) -> None:
        seen: set[str] = set()
        dup = [p for p in paths if p in self._paths or (p in seen or seen.add(p))]
        if dup:
            raise BankError(
                f"{len(dup)} image(s) are already in the bank or listed twice, e.g. {dup[0]}; "
                "each image can be an anchor once"
            )

    def add_embeddings(
        self,
        embeddings: np.ndarray,
        paths: Sequence[str],
        labels: Sequence[str],
        views: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add precomputed unit-norm embeddings ``(n, D)`` with their paths and labels (and, in a
        bank with bank.adapt_on=views, their unit-norm view embeddings ``views (n, 8, D)``)."""
        emb = np.asarray(embeddings)
        n = len(paths)
        if emb.ndim != 2 or emb.shape != (n, self.dim) or len(labels) != n:
            raise ValueError(
                f"add_embeddings: embeddings {emb.shape}, {n} paths, {len(labels)} labels; "
                f"expected ({n}, {self.dim}) and as many paths and labels"
            )
        if self.keeps_views and (views is None or np.shape(views) != (n, 8, self.dim)):
            got = "none" if views is None else np.shape(views)
            raise ValueError(
                f"add_embeddings: this bank adapts on views (bank.adapt_on=views) and needs the "
                f"anchors' view embeddings ({n}, 8, {self.dim}); got {got}"
            )
        if not self.keeps_views and views is not None:
            raise ValueError("add_embeddings: views given to a bank with bank.adapt_on=mean")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1)
        if n and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError(f"add_embeddings: rows must be unit-norm (norms {norms.min():.4f}..)")
        self._check_new_paths(paths)
        _check_labels(labels)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        total = len(self.anchors) + n
        dtype = embedding_dtype(total, self.config.bank.embeddings)
        self.embeddings = np.concatenate(
            [self.embeddings.astype(dtype, copy=False), emb], dtype=dtype
        )
        if self.views is not None:
            self.views = np.concatenate([self.views, np.asarray(views)], dtype=np.float16)
        rechoose = self.requested == "auto" and rechoose_due(
            self.choice, total, self.config.bank.rechoose_factor
        )
        if not rechoose:
            self.index.add(emb, ids)  # an untrained (IVF/PQ) index is empty: it trains on these
        self.anchors.extend(
            {"id": int(i), "path": str(p), "label": str(lab)}
            for i, p, lab in zip(ids, paths, labels, strict=True)
        )
        self.next_id += n
        self._refresh()
        if rechoose:
            self.choose_index()
        return ids

    def remove(self, label: str) -> int:
        """Remove every anchor of class ``label``; returns how many were removed."""
        if label not in self.classes:
            raise BankError(
                f"class {label!r} is not in the bank; "
                f"classes: {', '.join(self.classes) or '(none)'}"
            )
        drop = self.labels == self.classes.index(label)
        try:
            self.index.remove(self.ids[drop])
            rebuild = False
        except RemoveUnsupported:  # HNSW: rebuild from the kept embeddings
            rebuild = True
        keep = ~drop
        self.embeddings = np.ascontiguousarray(self.embeddings[keep])
        if self.views is not None:
            self.views = np.ascontiguousarray(self.views[keep])
        self.anchors = [a for a, k in zip(self.anchors, keep, strict=True) if k]
        self._refresh()
        if self.requested == "auto" and rechoose_due(
            self.choice, len(self), self.config.bank.rechoose_factor
        ):
            self.choose_index()
        elif rebuild:
            self.rebuild_index()
        return int(drop.sum())

    def rebuild_index(self, factory: str | None = None) -> None:
        """A fresh index (trained again if IVF/PQ) over the kept embeddings, with the same search
        parameters (``factory`` given: that index from now on, instead of auto's choice)."""
        params = self.index.search_params
        if factory:
            self.factory = self.requested = self.config.bank.index = factory
            self.choice, params = None, {}
        self.index = build_index(self.factory, self.embeddings, self.ids)
        if self.index.search_params.keys() == params.keys():
            self.index.set_search_params(params)

    def choose_index(self) -> IndexChoice:
        """bank.index=auto: choose the index for the bank's size (:func:`.auto.choose_index`),
        rebuild it when the choice changed, and tune its search breadth to bank.target_recall."""
        cfg = self.config.bank
        choice = choose_index(len(self), self.dim, cfg)
        if choice.factory != self.factory or self.index.ntotal != len(self):
            self.factory = choice.factory
            self.index = build_index(self.factory, self.embeddings, self.ids)
        choice.params, choice.recall, choice.tuned_on = tune(
            self.index, self.embeddings, self.ids, cfg.target_recall
        )
        self.choice = choice
        return choice

    # --- files ----------------------------------------------------------------------------------
    def manifest(self, files: dict[str, str]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "run": str(Path(self.run.run).absolute()),
            "checkpoint": self.run.name,
            "weights_sha256": self.run.meta["weights_sha256"],
            "config_digest": self.run.cfg.digest(),
            "backbone": self.run.cfg.model.backbone,
            "embed_dim": int(self.dim),
            "normalisation": "l2",
            "metric": "inner_product",
            "index_factory": self.factory,
            "index_requested": self.requested,
            "index_choice": self.choice.to_dict() if self.choice else None,
            "search_params": self.index.search_params,
            "embeddings_dtype": str(self.embeddings.dtype),
            "bank_config": dataclasses.asdict(self.config.bank),
            "num_anchors": len(self.anchors),
            "next_id": int(self.next_id),
            "classes": self.class_counts(),
            "calibration": self.calibration,
            "files": files,
        }

    def save(self, directory: str | Path, *, replace: bool = True) -> Path:
        """Write the bank as one directory, atomically, under the bank's writer lock
        (:mod:`.store`). ``replace=False`` refuses to replace a bank already there."""
        with writer_lock(directory) as target:
            check_target(target, replace)
            return replace_directory(target, self._write_files)

    def _write_files(self, d: Path) -> None:
        self.index.save(d / "index.faiss")
        with durable_file(d / "embeddings.npy") as f:  # written straight from the array
            np.save(f, np.ascontiguousarray(self.embeddings), allow_pickle=False)
        names = BANK_FILES
        if self.views is not None:
            with durable_file(d / VIEWS_FILE) as f:
                np.save(f, self.views, allow_pickle=False)
            names = (*names, VIEWS_FILE)
        write_file(d / "anchors.json", (json.dumps(self.anchors, indent=1) + "\n").encode())
        save_config(self.config, d / "config.yaml")
        files = {name: sha256_file(d / name) for name in names}
        write_file(d / MANIFEST, (json.dumps(self.manifest(files), indent=2) + "\n").encode())

    @classmethod
    def load(
        cls,
        directory: str | Path,
        loaded_run: LoadedRun | None = None,
        *,
        run: str | Path | None = None,
        checkpoint: str | None = None,
        device: str = "cpu",
    ) -> AnchorBank:
        """Read a bank and check it against the model; changes nothing on disk.

        The model is ``loaded_run`` if given, else the run ``run`` (default: the run recorded in
        the manifest) and its ``checkpoint``. Refused with :class:`BankError` when a file's sha256
        differs from the manifest (damaged or tampered) or when the model's weights sha256 or
        config digest differ from the ones the bank was built with. All files come from one save,
        even while a writer replaces the bank (:func:`.store.read_snapshot`).
        """
        snap = read_snapshot(directory, BANK_FILES, check_manifest, optional=(VIEWS_FILE,))
        target, manifest = snap.directory, snap.manifest
        if loaded_run is None:
            loaded_run = load_model_of(target, manifest, run, checkpoint, device)
        check_model(manifest, loaded_run, target)
        emb = npy_from_bytes(snap.files["embeddings.npy"], target / "embeddings.npy")
        try:
            anchors = json.loads(snap.files["anchors.json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise BankError(f"{target}/anchors.json cannot be read ({e})") from None
        dim = loaded_run.model.dim
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise BankError(
                f"{target}/embeddings.npy holds {emb.dtype} {emb.shape}; "
                f"expected float32 (N, {dim})"
            )
        if (
            not isinstance(anchors, list)
            or len(anchors) != len(emb)
            or not all(isinstance(a, dict) and {"id", "path", "label"} <= set(a) for a in anchors)
        ):
            raise BankError(
                f"{target}/anchors.json lists {len(anchors)} anchors for {len(emb)} embeddings "
                "(each needs id, path, label); rebuild the bank"
            )
        bank = cls(loaded_run, manifest["index_factory"])
        known = {f.name for f in dataclasses.fields(BankConfig)}
        saved = {k: v for k, v in manifest.get("bank_config", {}).items() if k in known}
        bank.config.bank = BankConfig(**saved)
        bank.factory = manifest["index_factory"]
        bank.requested = bank.config.bank.index = manifest.get("index_requested", bank.factory)
        bank.choice = choice_from_dict(manifest.get("index_choice"))
        bank.index = FaissIndex.from_bytes(
            snap.files.pop("index.faiss"), bank.factory, "ip", str(target / "index.faiss")
        )  # its bytes are dropped as soon as the index is read: the bank is not held twice
        bank.index.set_search_params(manifest.get("search_params") or {})
        bank.embeddings = emb
        bank.views = views_from_bytes(
            snap.files.pop(VIEWS_FILE, None), bank.keeps_views, len(emb), bank.dim, target
        )
        bank.anchors = anchors
        bank.next_id = int(manifest.get("next_id", len(anchors)))
        bank.calibration = manifest.get("calibration") or {}  # checked where it is used
        bank._refresh()
        if bank.index.needs_refill:  # written by an older version: ids only right until a removal
            bank.index.refill(bank.embeddings, bank.ids)
        if bank.index.ntotal != len(emb) or not np.array_equal(np.sort(bank.index.ids()), bank.ids):
            raise BankError(
                f"{target}/index.faiss holds {bank.index.ntotal} vectors whose ids do not match "
                f"the {len(emb)} anchors; rebuild the bank"
            )
        return bank


def _check_labels(labels: Sequence[str]) -> None:
    try:
        check_labels(set(labels), "bank")
    except DataError as e:
        raise BankError(str(e)) from None
