"""The review page of ``classify --html``: one self-contained HTML file for a person to look at
the classified cells.

Uncertain calls come first (least confident first), then the cells of each class in the bank's
order, least confident first. Each cell shows its thumbnail, the call and its probability, g as a
bar over the classes (one colour per class) and the anchors that support the call, as thumbnails
with their labels and pair probabilities.

Made for thousands of cells: thumbnails are small JPEGs (``data:`` URIs); an anchor that supports
many cells is embedded once, as a CSS class, however often it is shown. No scripts, nothing
outside the file, every text escaped (file and class names may hold anything, bytes that are not
UTF-8 included).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.colors import to_hex

from ..errors import DataError
from ..utils import atomic_write_text, printable
from .thumbs import Thumbnails, missing, short_name

UNCERTAIN = "uncertain"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1em auto; max-width: 1480px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; border-bottom: 2px solid #4f81bd; padding-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.4em; color: #1f3f66; }
.chips { display: flex; flex-wrap: wrap; gap: .3em .9em; font-size: .9em; }
.chip { white-space: nowrap; }
.key { display: inline-block; width: .9em; height: .9em; vertical-align: middle; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.cell { display: flex; gap: 6px; width: 464px; padding: 4px; border: 1px solid #ddd;
        border-radius: 4px; font-size: 12px; background: #fff; align-items: flex-start; }
.cell.unc { border-color: #e08a00; background: #fffaf2; }
.cell > img, .cell > .nothumb { flex: none; border: 1px solid #bbb; }
.info { width: 120px; flex: none; overflow-wrap: anywhere; }
.call { font-weight: bold; margin: 2px 0; }
.bar { display: flex; height: 9px; background: #eee; border: 1px solid #ccc; margin: 3px 0; }
.bar span { display: block; height: 100%; }
.top { color: #444; font-size: 11px; }
.anchors { display: flex; gap: 3px; flex-wrap: wrap; align-content: flex-start; }
.anc { width: 46px; text-align: center; font-size: 10px; line-height: 1.15;
       overflow-wrap: anywhere; }
.th { display: block; margin: 0 auto 1px auto; background-size: contain;
      background-repeat: no-repeat; background-position: center; border: 1px solid #ccc; }
.nothumb { display: inline-block; background: #d5d5d5; color: #333; font-size: 9px;
           overflow: hidden; text-align: center; vertical-align: top; }
p.note { color: #555; font-size: .9em; }
"""


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """A distinct colour per class, by its place in ``classes``."""
    palette = [to_hex(c) for c in colormaps["tab20"].colors + colormaps["tab20b"].colors]
    return {c: palette[i % len(palette)] for i, c in enumerate(classes)}


def review_order(records: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> list[int]:
    """Indices of ``records``: uncertain calls first, then by class in the order of ``classes``
    (calls of classes not listed last); least confident first within each."""
    rank = {c: i + 1 for i, c in enumerate(classes)}

    def key(i: int) -> tuple[int, float, int]:
        r = records[i]
        p = max(r["probabilities"].values(), default=0.0)
        group = 0 if r["prediction"] == UNCERTAIN else rank.get(r["prediction"], len(rank) + 1)
        return group, p, i

    return sorted(range(len(records)), key=key)


class _AnchorStyles:
    """Each anchor's thumbnail once, as a CSS class ``aN`` with a ``background-image``."""

    def __init__(self, size: int) -> None:
        self.thumbs = Thumbnails(size)
        self.names: dict[str, str] = {}
        self.rules: list[str] = []

    def tag(self, path: Any, label: str) -> str:
        got = self.thumbs.uri(path)
        if isinstance(got, DataError):
            return missing(got, self.thumbs.size)
        key = str(path)
        if key not in self.names:
            self.names[key] = f"a{len(self.names)}"
            self.rules.append(f'.{self.names[key]}{{background-image:url("{got}")}}')
        size = self.thumbs.size
        return (
            f'<span class="th {self.names[key]}" role="img" style="width:{size}px;height:{size}px"'
            f' aria-label="{escape(f"anchor {label}", quote=True)}"'
            f' title="{escape(printable(path), quote=True)}"></span>'
        )


def _g_bar(probs: Mapping[str, float], colours: Mapping[str, str]) -> str:
    parts = []
    for c, p in probs.items():
        if p >= 0.005:
            tip = escape(f"{printable(c)} {p:.3f}", quote=True)
            parts.append(
                f'<span style="width:{100 * p:.1f}%;background:{colours.get(c, "#888")}" '
                f'title="{tip}"></span>'
            )
    return '<div class="bar">' + "".join(parts) + "</div>"


def _cell(
    r: Mapping[str, Any],
    queries: Thumbnails,
    anchors: _AnchorStyles,
    colours: Mapping[str, str],
    max_anchors: int,
) -> str:
    probs = {str(k): float(v) for k, v in r["probabilities"].items()}
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    top, p_top = ranked[0] if ranked else ("?", 0.0)
    uncertain = r["prediction"] == UNCERTAIN
    call = (
        f"uncertain <span class='top'>(top {escape(printable(top))} {p_top:.2f})</span>"
        if uncertain
        else f"{escape(printable(r['prediction']))} {p_top:.2f}"
    )
    top3 = " · ".join(f"{escape(printable(c))} {p:.2f}" for c, p in ranked[:3])
    name = short_name(r["path"], 40)
    sup = []
    for a in (r.get("anchors") or [])[:max_anchors]:
        label = printable(a.get("label", "?"))
        pp = a.get("pair_probability")
        pp_text = f" {pp:.2f}" if isinstance(pp, (int, float)) else ""
        sup.append(
            f'<div class="anc">{anchors.tag(a.get("path"), label)}'
            f"{escape(label)}{escape(pp_text)}</div>"
        )
    return (
        f'<div class="cell{" unc" if uncertain else ""}">'
        + queries.img(r["path"], f"cell {name}")
        + f'<div class="info"><div title="{escape(printable(r["path"]), quote=True)}">'
        f"{escape(name)}</div><div class='call'>{call}</div>{_g_bar(probs, colours)}"
        f'<div class="top">{top3}</div></div>'
        f'<div class="anchors">{"".join(sup)}</div></div>'
    )


def _summary(
    records: Sequence[Mapping[str, Any]], classes: Sequence[str], colours: Mapping[str, str]
) -> str:
    counts = {c: 0 for c in [UNCERTAIN, *classes]}
    for r in records:
        counts[str(r["prediction"])] += 1
    chips = []
    for c, n in counts.items():
        key = (
            "" if c == UNCERTAIN else f'<span class="key" style="background:{colours[c]}"></span> '
        )
        name = escape(printable(c))
        link = f'<a href="#s-{_anchor_id(c, classes)}">{name}</a>' if n else name
        chips.append(f'<span class="chip">{key}{link} <b>{n}</b></span>')
    return '<p class="chips">' + "".join(chips) + "</p>"


def _anchor_id(c: str, classes: Sequence[str]) -> str:
    return "uncertain" if c == UNCERTAIN else f"c{list(classes).index(c)}"


def render_review(
    records: Sequence[Mapping[str, Any]],
    *,
    title: str = "siamese-marrow review",
    classes: Sequence[str] | None = None,
    about: Sequence[str] = (),
    thumb: int = 80,
    anchor_thumb: int = 44,
    max_anchors: int = 5,
) -> str:
    """The review page as an HTML5 string (see :func:`write_review`)."""
    classes = list(
        classes if classes is not None else records[0]["probabilities"] if records else []
    )
    classes += sorted({str(r["prediction"]) for r in records} - {UNCERTAIN, *classes})
    colours = class_colours(classes)
    queries, anchors = Thumbnails(thumb), _AnchorStyles(anchor_thumb)
    body, current = [], None
    for i in review_order(records, classes):
        r = records[i]
        group = str(r["prediction"])
        if group != current:
            if current is not None:
                body.append("</div>")
            n = sum(1 for x in records if x["prediction"] == group)
            body.append(
                f'<h2 id="s-{_anchor_id(group, classes)}">{escape(printable(group))} ({n})</h2>'
                '<div class="grid">'
            )
            current = group
        body.append(_cell(r, queries, anchors, colours, max_anchors))
    if current is not None:
        body.append("</div>")
    n_unc = sum(1 for r in records if r["prediction"] == UNCERTAIN)
    t = escape(printable(title))
    notes = "".join(f'<p class="note">{escape(printable(a))}</p>' for a in about)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{t}</title><style>{_CSS}{''.join(anchors.rules)}</style></head>\n<body>"
        f'<h1>{t}</h1><p class="headline"><strong>{len(records)}</strong> cells classified, '
        f"<strong>{n_unc}</strong> uncertain.</p>{notes}{_summary(records, classes, colours)}"
        '<p class="note">Uncertain calls first, then each class; least confident first. Each '
        "cell: its image, the call with g's top probability, g as a bar over the classes "
        "(hover for the values), then the anchors that support the call with their pair "
        "probabilities.</p>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_review(
    out_html: str | Path,
    records: Sequence[Mapping[str, Any]],
    **options: Any,
) -> dict[str, Any]:
    """Write the review page of classification ``records`` (the ``classify --format jsonl``
    objects: ``path``, ``prediction``, ``probabilities``, ``anchors``) atomically; ``options``
    are those of :func:`render_review` (title, classes, about: lines under the title, thumb and
    anchor_thumb sizes in px, max_anchors). Returns ``{"path", "cells", "bytes", "seconds"}``."""
    t0 = time.perf_counter()
    text = printable(render_review(records, **options))
    atomic_write_text(out_html, text)
    return {
        "path": str(out_html),
        "cells": len(records),
        "bytes": len(text.encode("utf-8", "surrogateescape")),
        "seconds": round(time.perf_counter() - t0, 2),
    }
