"""PNG figures for judging a classifier of imbalanced cell data: confusion matrix, per-class
recall and training curves (the image galleries are in :mod:`.gallery`).

Matplotlib is used through :class:`matplotlib.figure.Figure` and the Agg canvas only: no pyplot,
so no global figure state, no GUI backend and nothing left open. Every function takes an explicit
output path, writes it atomically and returns it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data.classes import MATEK_CLASSES
from ..errors import DataError
from ..utils import atomic_path, printable

#: Resolution of every saved figure.
DPI = 110

_GREY = (0.85, 0.85, 0.85)


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _check_metrics(metrics: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(
            f"metrics lacks {', '.join(missing)}; expected the dict of "
            "engine.metrics.classification_metrics (keys: "
            f"{', '.join(sorted(map(str, metrics)))})"
        )


def _supports(metrics: dict[str, Any], cm: np.ndarray) -> np.ndarray:
    """Images per true class: ``per_class[c]['support']`` (counts abstentions), else row sums."""
    per_class = metrics.get("per_class") or {}
    rows = cm.sum(1)
    return np.array(
        [
            int(per_class.get(c, {}).get("support", rows[i]))
            for i, c in enumerate(metrics["classes"])
        ],
        dtype=np.int64,
    )


def confusion_matrix_png(metrics: dict[str, Any], out: str | Path) -> Path:
    """Row-normalised confusion matrix (rows true, columns predicted) as a PNG.

    Cells show the percentage of the true class's images; empty cells had no image. The y tick
    labels carry each class's support. When some predictions abstained (``-1``), an extra
    ``abst.`` column shows their share, so every row still sums to 100.
    """
    _check_metrics(metrics, "confusion_matrix", "classes")
    classes = [printable(c) for c in metrics["classes"]]
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64).reshape(len(classes), -1)
    n = len(classes)
    support = _supports(metrics, cm)
    abstained = np.maximum(support - cm.sum(1), 0)
    cols = list(classes)
    if abstained.any():
        cm = np.concatenate([cm, abstained[:, None]], axis=1)
        cols.append("abst.")
    denom = np.maximum(support, 1)[:, None].astype(np.float64)
    frac = cm / denom
    frac[support == 0] = np.nan

    side = max(4.5, 0.42 * max(n, len(cols)) + 2.2)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad=_GREY)
    im = ax.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
    font = 8 if n <= 12 else 7 if n <= 24 else 6
    for i in range(n):
        for j in range(len(cols)):
            if cm[i, j] == 0:
                continue
            pct = 100.0 * frac[i, j]
            text = "<1" if pct < 1.0 else f"{pct:.0f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if frac[i, j] > 0.55 else "black",
                fontweight="bold" if i == j else "normal",
            )
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=font + 1)
    ax.set_yticks(
        range(n), [f"{c}  n={s}" for c, s in zip(classes, support, strict=True)], fontsize=font + 1
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (support)")
    ax.set_xticks(np.arange(-0.5, len(cols), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    bal = metrics.get("balanced_accuracy")
    acc = metrics.get("accuracy")
    sub = "" if bal is None or acc is None else f"  balanced acc. {bal:.3f}, acc. {acc:.3f}"
    ax.set_title(
        f"Confusion matrix, % of each true class (n={int(support.sum())}){sub}", fontsize=10
    )
    cbar = fig.colorbar(im, ax=ax, shrink=0.7, fraction=0.04)
    cbar.set_label("fraction of the true class")
    return _save(fig, out)


def _class_label(code: str) -> str:
    known = MATEK_CLASSES.get(code)
    return f"{code} ({known[0]})" if known else printable(code)


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` observed on ``n`` images."""
    if n <= 0:
        return (0.0, 0.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def per_class_recall_png(metrics: dict[str, Any], out: str | Path) -> Path:
    """Horizontal bars of recall per class, worst at the top, each annotated with its support
    ``n=...`` and a 95% Wilson interval (wide for rare classes: a recall of 1.0 on one image says
    little); the balanced accuracy (the mean of these recalls) is drawn as a vertical line.
    Classes with no image in the evaluated data are listed at the bottom without a bar."""
    _check_metrics(metrics, "per_class")
    per_class = metrics["per_class"]
    codes = [str(c) for c in metrics.get("classes", per_class)]
    rows = [
        (c, float(per_class[c].get("recall", 0.0)), int(per_class[c].get("support", 0)))
        for c in codes
        if c in per_class
    ]
    present = sorted((r for r in rows if r[2] > 0), key=lambda r: (r[1], -r[2], r[0]))
    absent = sorted(r for r in rows if r[2] <= 0)
    ordered = present + absent
    n = len(ordered)
    fig = Figure(figsize=(8.0, max(2.5, 0.32 * n + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)
    recalls = [r[1] if r[2] > 0 else 0.0 for r in ordered]
    colours = ["#c0504d" if r < 0.5 else "#4f81bd" for r in recalls]
    ax.barh(y, recalls, color=colours, height=0.7, zorder=2)
    lo_hi = np.array([_wilson(r[1], r[2]) for r in ordered])
    has = np.array([r[2] > 0 for r in ordered])
    if has.any():
        rec = np.asarray(recalls)
        ax.errorbar(
            rec[has],
            y[has],
            xerr=np.abs(lo_hi[has].T - rec[has]),
            fmt="none",
            ecolor="0.25",
            elinewidth=0.8,
            capsize=2,
            zorder=3,
            label="95% Wilson interval",
        )
    font = 8 if n <= 21 else 7
    for yi, (_code, rec, sup), (_, hi) in zip(y, ordered, lo_hi, strict=True):
        label = f"{rec:.2f}  n={sup}" if sup > 0 else "no images (n=0)"
        ax.text(
            min(max(rec, hi), 1.0) + 0.012,
            yi,
            label,
            va="center",
            fontsize=font,
            zorder=5,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85},
        )
    ax.set_yticks(y, [_class_label(r[0]) for r in ordered], fontsize=font)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("recall (sensitivity) of the class")
    bal = metrics.get("balanced_accuracy")
    if bal is not None:
        ax.axvline(
            float(bal),
            color="black",
            linestyle="--",
            linewidth=1.2,
            zorder=4,
            label=f"balanced accuracy {float(bal):.3f}",
        )
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    ax.set_title("Recall per class (red: below 0.5)", fontsize=10)
    return _save(fig, out)


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl``; blank lines and a truncated (unparseable) line
    left by an interrupted run are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the training log ({e.strerror or e})") from None
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


_LOSSES = (
    ("train_loss", "total loss", "-", 2.0),
    ("train_bce_concat", "BCE concat head", "--", 1.2),
    ("train_bce_hadamard", "BCE Hadamard head", "--", 1.2),
    ("train_consensus_ce", "consensus CE", ":", 1.5),
)
_VAL = (
    ("val_balanced_accuracy", "val balanced acc.", "-", 2.0),
    ("val_accuracy", "val accuracy", "-", 1.2),
    ("val_f1_macro", "val macro F1", "--", 1.2),
    ("val_f1_weighted", "val weighted F1", "--", 1.2),
    ("val_pair_auc", "val pair AUC", "-.", 1.5),
    ("val_pair_auc_concat", "val pair AUC concat", ":", 1.0),
    ("val_pair_auc_hadamard", "val pair AUC Hadamard", ":", 1.0),
    ("train_batch_acc", "train batch acc.", (0, (1, 3)), 1.0),
)


def _number(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _plot_series(
    ax: Any,
    epochs: np.ndarray,
    records: Sequence[dict[str, Any]],
    series: Sequence[tuple[str, str, Any, float]],
) -> int:
    drawn = 0
    for key, label, style, width in series:
        values = np.array([_number(r.get(key)) for r in records])
        if np.isnan(values).all():
            continue
        ax.plot(
            epochs, values, linestyle=style, linewidth=width, marker="o", markersize=3, label=label
        )
        drawn += 1
    return drawn


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def training_curves_png(metrics_jsonl: str | Path, out: str | Path) -> Path:
    """Training losses (total and its parts), validation metrics (balanced accuracy, accuracy,
    F1, pair AUC) and the consensus temperature tau (with the learning rate, when logged) per
    epoch, from a run's ``metrics.jsonl``. Missing keys are left out; one epoch shows as points.
    The best epoch by validation balanced accuracy is marked."""
    records = read_metrics_jsonl(metrics_jsonl)
    epochs = np.array(
        [_number(r.get("epoch", i + 1)) for i, r in enumerate(records)], dtype=np.float64
    )
    epochs = np.where(np.isnan(epochs), np.arange(1, len(records) + 1), epochs)
    fig = Figure(figsize=(10.5, 9.0), layout="constrained")
    ax_loss, ax_val, ax_tau = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]}
    )
    fig.suptitle(
        f"Training curves ({len(records)} epoch{'s' if len(records) != 1 else ''})", fontsize=11
    )
    if not records:
        for ax in (ax_loss, ax_val, ax_tau):
            _no_data(ax, f"no epoch recorded in {Path(metrics_jsonl).name}")
        return _save(fig, out)

    if _plot_series(ax_loss, epochs, records, _LOSSES):
        ax_loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax_loss, "no training loss logged")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)

    if _plot_series(ax_val, epochs, records, _VAL):
        ax_val.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax_val, "no validation metric logged")
    ax_val.set_ylabel("score")
    ax_val.set_ylim(-0.02, 1.02)
    ax_val.grid(alpha=0.3)
    bal = np.array([_number(r.get("val_balanced_accuracy")) for r in records])
    if not np.isnan(bal).all():
        best = int(np.nanargmax(bal))
        for ax in (ax_loss, ax_val, ax_tau):
            ax.axvline(epochs[best], color="0.5", linestyle=":", linewidth=1.0)
        right = len(records) > 1 and best >= len(records) / 2
        ax_val.annotate(
            f"best bal. acc. {bal[best]:.3f} (epoch {epochs[best]:g})",
            (epochs[best], bal[best]),
            textcoords="offset points",
            xytext=(-6 if right else 6, -12),
            ha="right" if right else "left",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "0.7", "pad": 2},
        )

    tau = np.array([_number(r.get("tau")) for r in records])
    lr = np.array([_number(r.get("lr")) for r in records])
    if not np.isnan(tau).all():
        ax_tau.plot(epochs, tau, color="tab:purple", marker="o", markersize=3, label="tau")
        ax_tau.set_ylabel("tau", color="tab:purple")
    else:
        _no_data(ax_tau, "tau not logged")
    if not np.isnan(lr).all():
        ax_lr = ax_tau.twinx()
        ax_lr.plot(epochs, lr, color="tab:gray", linestyle="--", marker=".", label="lr")
        ax_lr.set_ylabel("learning rate", color="tab:gray")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_tau.grid(alpha=0.3)
    ax_tau.set_xlabel("epoch")
    if len(records) == 1:
        ax_tau.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax_tau.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, out)
