"""Classify and search image files against a bank, and the output formats of ``classify``."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import expand_images
from ..errors import DataError
from ..index.calibration import bank_temperature
from ..index.classify import Classification, bank_scoring, classify, search
from ..models.embed import ImageLike, embed_images, embed_paths
from ..report import write_review
from .banks import BankLike, open_bank


def classify_images(
    bank: BankLike, images: Sequence[ImageLike] | torch.Tensor, **options: Any
) -> Classification:
    """Consensus classification of image files, PIL images or a preprocessed tensor
    ``(N, 3, H, W)``; ``options`` are those of :func:`siamese_marrow.index.classify`
    (top_m, per_class_k, abstain_below, n_support)."""
    bank = open_bank(bank)
    return classify(bank, embed_images(bank.model, images, tta=bank.bank_config.tta), **options)


def search_images(
    bank: BankLike, images: Sequence[ImageLike] | torch.Tensor, k: int = 10
) -> list[list[dict[str, Any]]]:
    """The ``k`` nearest anchors of each image, nearest first:
    ``[{"path", "label", "similarity", "pair_probability"}, ...]`` per image."""
    bank = open_bank(bank)
    return search(bank, embed_images(bank.model, images, tta=bank.bank_config.tta), k)


def classify_paths_timed(
    bank: BankLike,
    paths: Sequence[str | Path],
    *,
    abstain_below: float | None = None,
    top_m: int | None = None,
    per_class_k: int | None = None,
    n_support: int = 5,
    batch_size: int = 64,
    num_workers: int = 0,
    stream_batch: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """:func:`classify_paths` plus the timing (summed over chunks of ``stream_batch`` images,
    default ``bank.stream_batch``, embedded and classified one at a time, so the images of a
    large query set never sit in memory together): ``load_s`` (decode + transform), ``backbone_s``,
    ``search_s``, ``heads_s``, ``total_s``, ``outside_backbone_s`` and ``outside_backbone_share``
    (the fraction of the time spent outside the backbone forward pass)."""
    bank = open_bank(bank)
    t0 = time.perf_counter()
    files = expand_images(paths)
    step = stream_batch or bank.bank_config.stream_batch
    scoring = bank_scoring(bank, per_class_k)  # prototypes and shortlist: once, not per chunk
    records: list[dict[str, Any]] = []
    spent = dict.fromkeys(("load_s", "backbone_s", "search_s", "heads_s"), 0.0)
    for start in range(0, max(len(files), 1), step):  # streamed: one chunk of images at a time
        chunk = files[start : start + step]
        emb, t_embed = embed_paths(
            bank.model, chunk, batch_size, num_workers, tta=bank.bank_config.tta
        )
        result = classify(
            bank,
            emb,
            top_m=top_m,
            per_class_k=per_class_k,
            abstain_below=abstain_below,
            n_support=n_support,
            scoring=scoring,
        )
        records.extend(result.records(chunk))
        for key in ("load_s", "backbone_s"):
            spent[key] += t_embed[key]
        for key in ("search_s", "heads_s"):
            spent[key] += result.timing[key]
    total = time.perf_counter() - t0
    timing = {
        "images": len(files),
        **spent,
        "total_s": total,
        "outside_backbone_s": total - spent["backbone_s"],
        "outside_backbone_share": (total - spent["backbone_s"]) / total if total > 0 else 0.0,
    }
    return records, timing


def classify_paths(
    bank: BankLike, paths: Sequence[str | Path], **options: Any
) -> list[dict[str, Any]]:
    """One record per image (files, or folders expanded):
    ``{"path", "prediction": code | "uncertain", "probabilities": {code: p}, "anchors": [...]}``.

    ``options`` are those of :func:`classify_paths_timed` (abstain_below, top_m, per_class_k,
    n_support, batch_size, num_workers)."""
    return classify_paths_timed(bank, paths, **options)[0]


def format_records(records: Sequence[dict[str, Any]], fmt: str = "jsonl") -> str:
    """Classification records as ``jsonl`` (one object per line), ``json`` (a list) or ``csv``
    (``path,prediction,p_<code>...,top_anchor,top_anchor_similarity``)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "json":
        return json.dumps(list(records), indent=2) + "\n"
    if fmt != "csv":
        raise DataError(f"--format {fmt!r} is not jsonl, csv or json")
    classes = list(records[0]["probabilities"]) if records else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["path", "prediction", *[f"p_{c}" for c in classes], "top_anchor", "top_anchor_similarity"]
    )
    for r in records:
        top = r["anchors"][0] if r["anchors"] else {"path": "", "similarity": ""}
        w.writerow(
            [
                r["path"],
                r["prediction"],
                *[f"{r['probabilities'][c]:.6f}" for c in classes],
                top["path"],
                top["similarity"],
            ]
        )
    return buf.getvalue()


def search_paths(
    bank: BankLike, paths: Sequence[str | Path], k: int = 10, batch_size: int = 64
) -> list[dict[str, Any]]:
    """``[{"path": query, "neighbours": [{"path", "label", "similarity", "pair_probability"}]}]``,
    nearest first, one entry per query image."""
    bank = open_bank(bank)
    files = expand_images(paths)
    emb, _ = embed_paths(bank.model, files, batch_size, tta=bank.bank_config.tta)
    return [{"path": p, "neighbours": n} for p, n in zip(files, search(bank, emb, k), strict=True)]


def write_review_page(
    bank: BankLike,
    records: Sequence[dict[str, Any]],
    out_html: str | Path,
    *,
    bank_dir: str | Path | None = None,
    abstain_below: float | None = None,
) -> dict[str, Any]:
    """The review page of ``classify --html`` for ``records`` (:func:`classify_paths`) made with
    ``bank``: ``{"path", "cells", "bytes", "seconds"}`` (see :func:`siamese_marrow.report.
    write_review`)."""
    bank = open_bank(bank)
    t = bank_temperature(bank)
    fitted = bank.calibration.get("fitted_on") if bank.calibration else None
    about = [
        f"Bank {bank_dir or '(in memory)'}: {len(bank)} anchors of {len(bank.classes)} classes; "
        f"model {bank.run.run} ({bank.run.name}).",
        f"g scaled by the bank's temperature {t:.4g} (fitted on {fitted})."
        if fitted
        else "g is the model's own (the bank holds no temperature: siamese-marrow bank calibrate).",
    ]
    below = bank.bank_config.abstain_below if abstain_below is None else abstain_below
    if any(r["prediction"] == "uncertain" for r in records) or below > 0:
        about.append(f"Calls whose top probability is below {below:g} are 'uncertain'.")
    return write_review(
        out_html, records, title="siamese-marrow review", classes=bank.classes, about=about
    )
