"""Bank operations for the CLI and notebooks: build a bank from a run and a data set, add or
remove a class, show what a bank holds. Each takes paths and plain values and returns a plain
dict. A ``bank`` argument is an :class:`AnchorBank` or the path of a bank directory (whose model is
then loaded from the run recorded in its manifest, or ``run``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import overridden
from ..data.datasets import expand_images, load_samples
from ..index.bank import AnchorBank
from ..index.bankfiles import check_target, read_manifest
from ..index.store import writer_lock
from ..models.checkpoint import load_run
from .distributed import is_main, on_main

BankLike = AnchorBank | str | Path


def open_bank(
    bank: BankLike,
    run: str | Path | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
) -> AnchorBank:
    """The bank itself, or the bank saved at a path with its model (checked by the manifest)."""
    if isinstance(bank, AnchorBank):
        return bank
    return AnchorBank.load(bank, run=run, checkpoint=checkpoint, device=device)


def bank_summary(bank: AnchorBank, path: str | Path | None = None) -> dict[str, Any]:
    return {
        "bank": str(path) if path is not None else None,
        "run": str(bank.run.run),
        "checkpoint": bank.run.name,
        "index": bank.factory,
        "index_requested": bank.requested,
        "index_choice": bank.choice.to_dict() if bank.choice else None,
        "search_params": bank.index.search_params,
        "tta": bank.bank_config.tta,
        "adapt_on": bank.bank_config.adapt_on,
        "prototypes_per_class": bank.bank_config.prototypes_per_class,
        "anchors": len(bank),
        "classes": bank.class_counts(),
    }


def bank_info(bank_dir: str | Path) -> dict[str, Any]:
    """The manifest of a saved bank (no model is loaded; nothing on disk changes)."""
    return read_manifest(bank_dir)


def bank_build(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "best",
    factory: str | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
    tta: bool | None = None,
    adapt_on: str | None = None,
    prototypes_per_class: int | None = None,
) -> dict[str, Any]:
    """Embed every image of ``data`` (folder or CSV) with the run's model and save a bank at
    ``out``; ``factory`` overrides the run's ``bank.index``, ``tta`` its ``bank.tta`` (the
    bank records it, so its queries are embedded the same way), ``adapt_on`` its
    ``bank.adapt_on`` ("views": the bank keeps each anchor's 8 view embeddings) and
    ``prototypes_per_class`` its ``bank.prototypes_per_class`` (the bank records both). A bank
    already at ``out`` is replaced only with ``force`` (refused before any work otherwise).

    Under torchrun every rank calls it: the images are embedded in shards
    (:func:`..models.sharding.sharded_embedding`), and rank 0 alone takes the bank's lock and
    saves, the same files as one process."""
    main = is_main()
    with writer_lock(out) if main else contextlib.nullcontext(Path(out).absolute()) as target:
        on_main(lambda: check_target(target, replace=force))
        loaded = load_run(run, checkpoint, device=device)
        loaded.cfg.bank = overridden(
            loaded.cfg.bank,
            "bank",
            tta=tta,
            adapt_on=adapt_on,
            prototypes_per_class=prototypes_per_class,
        )
        samples = load_samples(data, classes)
        t = time.perf_counter()
        bank = AnchorBank.build(loaded, samples, batch_size, num_workers, factory, progress)
        if main:
            bank.save(out, replace=force)
    return {**bank_summary(bank, out), "seconds": round(time.perf_counter() - t, 3)}


def bank_add(
    bank_dir: str | Path,
    label: str,
    sources: Sequence[str | Path],
    *,
    run: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Add the images in ``sources`` (files or folders) as anchors of class ``label``, and save.
    The bank's writer lock is held from reading to saving, so concurrent writers queue up and
    none of their changes is lost."""
    paths = expand_images(sources)
    with writer_lock(bank_dir):
        bank = open_bank(bank_dir, run, device=device)
        ids = bank.add(paths, label, batch_size, num_workers, progress)
        bank.save(bank_dir)
    return {**bank_summary(bank, bank_dir), "added": int(len(ids)), "label": label}


def bank_remove(
    bank_dir: str | Path, label: str, *, run: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Remove every anchor of class ``label``, and save (under the writer lock, as bank_add)."""
    with writer_lock(bank_dir):
        bank = open_bank(bank_dir, run, device=device)
        n = bank.remove(label)
        bank.save(bank_dir)
    return {**bank_summary(bank, bank_dir), "removed": n, "label": label}
