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

from ..data.classes import CLASS_CODES
from ..data.datasets import Sample, load_samples
from ..data.prepare import PreparedData, prepare_data, synth_dir_of
from ..errors import DataError
from ..index.bank import AnchorBank
from ..index.calibration import bank_temperature, nll
from ..index.classify import UNCERTAIN, Classification, classify
from ..index.retrieval import bank_retrieval
from ..models.checkpoint import LoadedRun, load_run
from ..models.embed import embed_paths
from ..report import (
    Published,
    confusion_matrix_png,
    mistakes_gallery_png,
    per_class_recall_png,
    reliability_png,
    risk_coverage_png,
    training_curves_png,
    write_report,
)
from ..utils import atomic_write_json
from .banks import BankLike, open_bank
from .calibrate import evaluation_temperature
from .distributed import is_main
from .metrics import classification_metrics, headline
from .reliability import abstention_summary, reliability_summary

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


def published_for(classes: Sequence[str]) -> Published:
    """The published figures, headed as comparable only when the classes are the 21 they were
    measured on."""
    if set(classes) == set(CLASS_CODES):
        heading = "Published figures on the same 21 classes (other splits and images)"
        note = "Other images and splits than this run's: for orientation, not a controlled test."
    else:
        heading = f"Published figures: different task: 21 classes (this run: {len(classes)})"
        note = (
            f"Measured on all 21 classes of the full data set; this run has {len(classes)} "
            "classes, so these numbers are not comparable with it. Compare with this run's own "
            "baselines above."
        )
    return Published(heading, PUBLISHED, note)


def _queries_and_bank(
    run: Path, loaded: LoadedRun, data: str | Path | None, bank: str | Path | None, progress: bool
) -> tuple[list[Sample], AnchorBank, str, PreparedData | None]:
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
    return queries, bank_obj, anchors_from, prepared


def _validation_split(run: Path, loaded: LoadedRun, prepared: PreparedData | None) -> list[Sample]:
    """The run's validation split (the images a temperature is fitted on), [] if unavailable."""
    if prepared is None:
        try:
            prepared = prepare_data(loaded.cfg.data, synth_dir=synth_dir_of(run))
        except (DataError, OSError):  # the run's data has moved: cross-fit on the scored images
            return []
    return prepared.val


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


def own_baselines(
    bank: AnchorBank, emb: np.ndarray, y: np.ndarray, paths: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Prototypes (nearest class mean, cosine) and 1-NN on the same embedding, against the same
    anchors and images as the consensus. An image that is itself an anchor is not its own
    nearest neighbour."""
    onehot = np.eye(len(bank.classes), dtype=np.float32)[bank.labels]  # (N, C)
    protos = onehot.T @ bank.embeddings  # (C, D)
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    proto_pred = (emb @ protos.T).argmax(1)
    k = min(2, len(bank))
    _, ids = bank.index.search(np.ascontiguousarray(emb, dtype=np.float32), k)
    rows = bank.rows_of_ids(ids)
    own = {a["path"]: i for i, a in enumerate(bank.anchors)}
    self_hit = np.array([own.get(p, -2) for p in paths]) == rows[:, 0]
    nn_rows = np.where(self_hit & (k > 1), rows[:, -1], rows[:, 0])
    nn_pred = np.where(nn_rows >= 0, bank.labels[nn_rows.clip(0)], -1)
    return {
        "Prototypes on the same embedding (same anchors, same images)": headline(
            classification_metrics(y, proto_pred, bank.classes)
        ),
        "1-NN on the same embedding (same anchors, same images)": headline(
            classification_metrics(y, nn_pred, bank.classes)
        ),
    }


def _baselines(run: Path, metrics: dict[str, Any], with_probe: bool) -> dict[str, dict[str, Any]]:
    """This run's own baselines: the frozen probe (when it was scored on these images' split),
    then the embedding baselines computed by :func:`own_baselines`."""
    baselines: dict[str, Any] = {}
    probe = run / "baseline_probe.json"
    if probe.is_file() and with_probe:
        where = "" if metrics.get("split") == "val" else ", not on these images"
        name = f"Logistic probe on frozen pretrained features (scored on the val split{where})"
        baselines[name] = headline(json.loads(probe.read_text()))
    baselines.update(metrics.get("own_baselines", {}))
    return baselines


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
        "Reliability of g's top probability": reliability_png(metrics, out / "reliability.png"),
        "Risk-coverage of --abstain-below": risk_coverage_png(metrics, out / "risk_coverage.png"),
    }
    if (run / "metrics.jsonl").is_file():
        figures["Training curves"] = training_curves_png(run / "metrics.jsonl", out / "curves.png")
    mistakes_gallery_png(mistakes, out / "mistakes_gallery.png")  # a file; the page has thumbnails
    real = loaded.cfg.data.root != "synthetic"  # published figures are for real cells only
    notes = []
    if metrics.get("queries_that_are_anchors"):
        notes.append(
            f"{metrics['queries_that_are_anchors']} of the {metrics['n']} images scored are "
            "anchors of the bank: each finds itself among its candidates, so these figures are "
            "optimistic. Evaluate on images that are not in the bank."
        )
    return write_report(
        out / "report.html",
        title=f"siamese-marrow evaluation of {run.absolute().parent.name}/{run.name}",
        config=loaded.cfg.to_dict(),
        metrics=metrics,
        figures=figures,
        baselines=_baselines(run, metrics, with_probe),
        published=published_for(metrics["classes"]) if real else None,
        retrieval=metrics.get("retrieval"),
        mistakes=mistakes,
        notes=notes,
    )


def _trust(
    bank: AnchorBank,
    raw: Classification,
    y: np.ndarray,
    paths: list[str],
    candidates: list[Sample],
    calibrate: bool,
    progress: bool,
) -> tuple[dict[str, Any], Classification]:
    """Calibration and abstention metrics, and the result as ``classify`` gives it with this
    bank (its temperature applied)."""
    out: dict[str, Any] = reliability_summary(raw.probabilities, y)
    out["nll"] = nll(raw.probabilities, y)
    t_bank = bank_temperature(bank)
    result = raw.with_temperature(t_bank, bank.bank_config.abstain_below)
    if calibrate:
        record, scaled = evaluation_temperature(
            bank, raw.probabilities, y, paths, candidates=candidates, progress=progress
        )
        if scaled is not None:
            record.update(reliability_summary(scaled, y))
            record["nll"] = nll(scaled, y)
        out["calibration"] = record
    out.update(abstention_summary(result.probabilities, y))
    out["risk_coverage_on"] = (
        f"g scaled by the bank's temperature {t_bank:.4g}, as classify gives it"
        if bank.calibration
        else "the model's own g, as classify gives it with this bank (it holds no temperature)"
    )
    return out, result


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
    calibrate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Classify the query images, write ``metrics.json``, the figures and ``report.html`` to
    ``out`` (default ``RUN/eval``) and return the metrics (retrieval metrics too with a bank).

    metrics.json also holds ``ece`` and ``reliability`` (g's top probability), ``calibration``
    (with ``calibrate``: the same after a temperature, see
    :func:`~.calibrate.evaluation_temperature`), ``risk_coverage`` and ``abstention_thresholds``
    (on g as ``classify`` gives it with this bank) and ``own_baselines``."""
    run = Path(run)
    out = Path(out) if out is not None else run / "eval"
    t0 = time.perf_counter()
    loaded = load_run(run, checkpoint)
    queries, bank_obj, anchors_from, prepared = _queries_and_bank(run, loaded, data, bank, progress)
    paths = [str(Path(s.path).absolute()) for s in queries]
    emb, _ = embed_paths(
        bank_obj.model,
        paths,
        batch_size,
        num_workers,
        progress,
        desc="queries",
        tta=bank_obj.bank_config.tta,
    )
    raw = classify(bank_obj, emb, temperature=1.0)
    index = {c: i for i, c in enumerate(bank_obj.classes)}
    y_true = np.array([index[s.label] for s in queries])
    candidates = _validation_split(run, loaded, prepared)
    trust, result = _trust(bank_obj, raw, y_true, paths, candidates, calibrate, progress)
    y_pred = np.array([index.get(p, -1) for p in result.predictions])
    metrics = classification_metrics(y_true, y_pred, bank_obj.classes)
    metrics["abstained"] = int(sum(p == UNCERTAIN for p in result.predictions))
    metrics["anchors"] = anchors_from
    metrics["queries"] = str(data) if data is not None else "the run's held-out split"
    if data is None and prepared is not None:
        metrics["split"] = "test" if prepared.test else "val"
    anchor_paths = {a["path"] for a in bank_obj.anchors}
    metrics["queries_that_are_anchors"] = sum(p in anchor_paths for p in paths)
    metrics.update(trust)
    metrics["own_baselines"] = own_baselines(bank_obj, emb, y_true, paths)
    if bank is not None:
        metrics["retrieval"] = bank_retrieval(bank_obj, emb, [s.label for s in queries], paths)

    mistakes = _most_confident_mistakes(queries, paths, y_true, y_pred, result, max_mistakes)
    report = out / "report.html"
    if is_main():  # under torchrun every rank embedded its share; rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / "predictions.json", result.records(paths))
        report = _write_report(run, out, loaded, metrics, mistakes, with_probe=data is None)
    summary = {
        **headline(metrics),
        "n": metrics["n"],
        "abstained": metrics["abstained"],
        "ece": round(metrics["ece"], 4),
        "metrics": str(out / "metrics.json"),
        "report": str(report),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    cal = metrics.get("calibration") or {}
    if cal.get("ece") is not None:
        summary["temperature"] = cal["temperature"]
        summary["ece_after_temperature"] = round(cal["ece"], 4)
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
    emb, _ = embed_paths(
        bank.model,
        paths,
        batch_size,
        num_workers,
        progress,
        desc="retrieval",
        tta=bank.bank_config.tta,
    )
    out = bank_retrieval(bank, emb, [s.label for s in samples], paths, ks)
    out["data"] = str(data)
    return out
