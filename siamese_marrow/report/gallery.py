"""Image galleries: a classifier's mistakes with their supporting anchors, and a query cell with
its nearest anchors. Drawn on a matplotlib ``Figure`` (no pyplot state), saved atomically as PNG."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..data.io import load_rgb
from ..errors import DataError
from ..utils import printable
from .figures import _no_data, _number, _save

#: Anchors shown per mistake in :func:`mistakes_gallery_png`.
MAX_ANCHORS = 5


def _show_image(ax: Any, path: Any) -> bool:
    """Draw ``path`` on ``ax``, or a grey placeholder naming the problem; True when drawn."""
    try:
        if path is None or str(path) == "":
            raise DataError("no image path given")
        ax.imshow(load_rgb(path))
        ok = True
    except DataError as e:
        reason = getattr(e, "problem", None) or str(e)
        ax.imshow(np.full((64, 64, 3), 0.82))
        ax.text(
            0.5,
            0.5,
            "\n".join(textwrap.wrap(f"image unavailable: {reason}", 22)[:6]),
            ha="center",
            va="center",
            fontsize=6,
            color="0.15",
            transform=ax.transAxes,
        )
        ok = False
    ax.set_xticks([])
    ax.set_yticks([])
    return ok


def _short_name(path: Any, width: int = 26) -> str:
    name = printable(Path(str(path)).name) if path else "?"
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def mistakes_gallery_png(
    mistakes: Sequence[dict[str, Any]], out: str | Path, max_items: int = 12
) -> Path:
    """One row per mistake (the first ``max_items``, in the order given): the query image with
    its true and predicted class and the confidence of the prediction, then up to five supporting
    anchors, each with its label, pair probability and cosine similarity. Anchor titles are red
    when the anchor has the predicted class and green when it has the true one.

    Each mistake: ``{"path", "true", "predicted", "confidence", "anchors": [{"path", "label",
    "similarity", "pair_probability"}, ...]}``. An image that is missing or cannot be decoded is
    shown as a grey placeholder stating why.
    """
    items = list(mistakes)[: max(0, int(max_items))]
    n_anchor = max([min(len(m.get("anchors") or []), MAX_ANCHORS) for m in items] + [0])
    ncols = 1 + max(n_anchor, 1)
    nrows = max(len(items), 1)
    fig = Figure(figsize=(1.9 * ncols + 0.4, 2.6 * nrows + 0.6), layout="constrained")
    fig.suptitle(
        f"Mistakes: {len(items)} of {len(mistakes)} shown. Query (true, predicted, confidence), "
        "then its supporting anchors;\nanchor label in red: the predicted class, green: the true "
        "class",
        fontsize=9,
    )
    if not items:
        ax = fig.add_subplot()
        ax.axis("off")
        _no_data(ax, "no mistakes to show")
        return _save(fig, out)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for row, m in zip(axes, items, strict=False):
        for ax in row:
            ax.axis("off")
        true, pred = printable(m.get("true", "?")), printable(m.get("predicted", "?"))
        conf = _number(m.get("confidence"))
        q = row[0]
        q.axis("on")
        _show_image(q, m.get("path"))
        conf_text = "" if math.isnan(conf) else f"  p={conf:.2f}"
        q.set_title(
            f"true {true}\npred {pred}{conf_text}", fontsize=8, color="#a00000", fontweight="bold"
        )
        q.set_xlabel(_short_name(m.get("path")), fontsize=6)
        for spine in q.spines.values():
            spine.set_edgecolor("#a00000")
            spine.set_linewidth(2.0)
        for ax, a in zip(row[1:], (m.get("anchors") or [])[:MAX_ANCHORS], strict=False):
            ax.axis("on")
            _show_image(ax, a.get("path"))
            label = printable(a.get("label", "?"))
            colour = "#a00000" if label == pred else "#006400" if label == true else "black"
            pp, sim = _number(a.get("pair_probability")), _number(a.get("similarity"))
            parts = [label]
            if not math.isnan(pp):
                parts.append(f"pair p={pp:.2f}")
            title = "  ".join(parts)
            if not math.isnan(sim):
                title += f"\ncos {sim:.3f}"
            ax.set_title(title, fontsize=7, color=colour)
            ax.set_xlabel(_short_name(a.get("path")), fontsize=6)
    return _save(fig, out)


def neighbours_gallery_png(
    query_path: str | Path,
    neighbours: Sequence[dict[str, Any]],
    out_png: str | Path,
    cols: int = 5,
) -> Path:
    """The query and its neighbours, nearest first (label, cosine, pair probability under each).

    ``neighbours``: ``[{"path", "label", "similarity", "pair_probability"}, ...]`` as returned by
    ``search``. A missing image is shown as a grey placeholder stating why.
    """
    n = len(neighbours) + 1
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.2 * cols, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    panels = [(str(query_path), "query")] + [
        (
            nb["path"],
            f"{printable(nb['label'])}\ncos {nb['similarity']:.3f}  p {nb['pair_probability']:.3f}",
        )
        for nb in neighbours
    ]
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (path, title) in zip(axes.ravel(), panels, strict=False):
        ax.axis("on")
        _show_image(ax, path)
        ax.set_title(title, fontsize=8)
    return _save(fig, out_png)
