"""Evaluation that people look at: metrics.json, figures and a self-contained report.html.

Queries are classified by the siamese consensus against an anchor bank: the bank given, or one
built in memory from the run's own training split. Query images are the ``--data`` folder, or the
run's held-out split (test when it has one, else validation). :func:`retrieval_eval` scores
nearest-anchor retrieval of a data set against a bank.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import Sample, load_samples
from ..data.prepare import prepare_data, synth_dir_of
from ..errors import DataError
from ..index.bank import AnchorBank
from ..index.classify import UNCERTAIN, Classification, classify
from ..index.retrieval import bank_retrieval
from ..models.checkpoint import LoadedRun, load_run
from ..models.embed import embed_paths
from ..report import (
    confusion_matrix_png,
    mistakes_gallery_png,
    per_class_recall_png,
    training_curves_png,
    write_report,
)
from ..utils import atomic_write_json
from .banks import BankLike, open_bank
from .metrics import classification_metrics, headline

#: Published full-data figures (DESIGN.md), shown beside the run's own numbers for orientation.
PUBLISHED = {
    "Matek 2021 ResNeXt-50 (full 21 classes, published)": {
        "accuracy": 0.73,
        "balanced_accuracy": 0.69,
        "f1_weighted": 0.75,
    },
    "DinoBloom frozen + logistic (full data, published)": {
        "accuracy": 0.85,
        "balanced_accuracy": "0.64-0.69",
    },
}


def _queries_and_bank(
    run: Path, loaded: LoadedRun, data: str | Path | None, bank: str | Path | None, progress: bool
) -> tuple[list[Sample], AnchorBank, str]:
    prepared = None
    if bank is not None:
        bank_obj = AnchorBank.load(bank, run=run, checkpoint=loaded.name)
        anchors_from = f"bank {bank}"
    else:
        prepared = prepare_data(loaded.cfg.data, synth_dir=synth_dir_of(run))
        bank_obj = AnchorBank.build(loaded, prepared.train, progress=progress)
        anchors_from = f"the run's training split ({len(prepared.train)} images)"
    if data is not None:
        queries = load_samples(data)
    else:
        prepared = prepared or prepare_data(loaded.cfg.data, synth_dir=synth_dir_of(run))
        queries = prepared.test or prepared.val
        if not queries:
            raise DataError(f"{run} has no held-out split to evaluate; pass --data DIR")
    unknown = sorted({s.label for s in queries} - set(bank_obj.classes))
    if unknown:
        raise DataError(
            f"query class(es) {', '.join(unknown)} have no anchors in the bank "
            f"(bank classes: {', '.join(bank_obj.classes)}); add them with "
            "siamese-marrow bank add, or evaluate on the bank's classes only"
        )
    return queries, bank_obj, anchors_from


def _most_confident_mistakes(
    queries: list[Sample],
    paths: list[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    result: Classification,
    max_mistakes: int,
) -> list[dict[str, Any]]:
    """The wrong calls, most confident first: query, truth, call, confidence, its anchors."""
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = result.probabilities.max(1)
    return [
        {
            "path": paths[i],
            "true": queries[i].label,
            "predicted": result.predictions[i],
            "confidence": float(confidence[i]),
            "anchors": result.support[i],
        }
        for i in wrong[np.argsort(-confidence[wrong], kind="stable")][:max_mistakes]
    ]


def _write_report(
    run: Path,
    out: Path,
    loaded: LoadedRun,
    metrics: dict[str, Any],
    mistakes: list[dict[str, Any]],
    with_probe: bool,
) -> Path:
    """The figures and ``report.html`` in ``out``; the run's probe is shown when the queries are
    its own held-out split (``with_probe``), published figures only for real cells."""
    figures = {
        "Confusion matrix (row-normalised)": confusion_matrix_png(metrics, out / "confusion.png"),
        "Per-class recall": per_class_recall_png(metrics, out / "recall.png"),
    }
    if (run / "metrics.jsonl").is_file():
        figures["Training curves"] = training_curves_png(run / "metrics.jsonl", out / "curves.png")
    figures["Gallery of the most confident mistakes"] = mistakes_gallery_png(
        mistakes, out / "mistakes_gallery.png"
    )
    baselines: dict[str, Any] = {}
    probe = run / "baseline_probe.json"
    if probe.is_file() and with_probe:
        baselines["Logistic probe on frozen pretrained features (same split)"] = headline(
            json.loads(probe.read_text())
        )
    if loaded.cfg.data.root != "synthetic":  # published figures are for real cells only
        baselines.update(PUBLISHED)
    return write_report(
        out / "report.html",
        title=f"siamese-marrow evaluation of {run.absolute().parent.name}/{run.name}",
        config=loaded.cfg.to_dict(),
        metrics=metrics,
        figures=figures,
        baselines=baselines,
        retrieval=metrics.get("retrieval"),
    )


def evaluate(
    run: str | Path,
    *,
    data: str | Path | None = None,
    bank: str | Path | None = None,
    out: str | Path | None = None,
    checkpoint: str = "best",
    max_mistakes: int = 12,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Classify the query images, write ``metrics.json``, the figures and ``report.html`` to
    ``out`` (default ``RUN/eval``) and return the metrics (retrieval metrics too with a bank)."""
    run = Path(run)
    out = Path(out) if out is not None else run / "eval"
    t0 = time.perf_counter()
    loaded = load_run(run, checkpoint)
    queries, bank_obj, anchors_from = _queries_and_bank(run, loaded, data, bank, progress)
    paths = [str(Path(s.path).absolute()) for s in queries]
    emb, _ = embed_paths(bank_obj.model, paths, batch_size, num_workers, progress, desc="queries")
    result = classify(bank_obj, emb)
    classes = bank_obj.classes
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[s.label] for s in queries])
    y_pred = np.array([index.get(p, -1) for p in result.predictions])
    metrics = classification_metrics(y_true, y_pred, classes)
    metrics["abstained"] = int(sum(p == UNCERTAIN for p in result.predictions))
    metrics["anchors"] = anchors_from
    metrics["queries"] = str(data) if data is not None else "the run's held-out split"
    if bank is not None:
        metrics["retrieval"] = bank_retrieval(bank_obj, emb, [s.label for s in queries], paths)

    mistakes = _most_confident_mistakes(queries, paths, y_true, y_pred, result, max_mistakes)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "predictions.json", result.records(paths))
    report = _write_report(run, out, loaded, metrics, mistakes, with_probe=data is None)
    summary = {
        **headline(metrics),
        "n": metrics["n"],
        "abstained": metrics["abstained"],
        "metrics": str(out / "metrics.json"),
        "report": str(report),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if "retrieval" in metrics:
        summary["retrieval"] = {
            k: v for k, v in metrics["retrieval"].items() if isinstance(v, (int, float))
        }
    return summary


def retrieval_eval(
    bank: BankLike,
    data: str | Path,
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """precision@1, R-precision, MAP@R and recall@k of the images of ``data`` against the bank.

    An image that is itself an anchor is excluded from its own neighbours (so ``--data`` may be
    the bank's own data). Queries whose class is not in the bank are counted, not scored.
    """
    bank = open_bank(bank)
    samples = load_samples(data)
    paths = [str(Path(s.path).absolute()) for s in samples]
    emb, _ = embed_paths(bank.model, paths, batch_size, num_workers, progress, desc="retrieval")
    out = bank_retrieval(bank, emb, [s.label for s in samples], paths, ks)
    out["data"] = str(data)
    return out
