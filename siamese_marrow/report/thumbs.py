"""Small JPEG thumbnails of cell images for HTML pages (base64 ``data:`` URIs), and the report's
gallery of mistakes drawn with them.

A cell crop of 128-250 px becomes a JPEG of ~1-3 kB at 48-96 px, so a page can show thousands.
An image that is missing or cannot be decoded becomes a grey placeholder naming the problem, never
a broken ``<img>``. Every text is escaped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.io import load_rgb
from ..errors import DataError
from ..utils import printable

#: JPEG quality of the thumbnails (small, and still shows a nucleus's chromatin).
QUALITY = 80


def thumbnail_jpeg(path: str | Path, size: int, quality: int = QUALITY) -> bytes:
    """A JPEG of the image at ``path`` fitted into ``size`` x ``size`` px (aspect kept), or a
    :class:`DataError` naming the file and the problem."""
    img = load_rgb(path)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def short_name(path: Any, width: int = 28) -> str:
    """The file name, printable, cut from the left to ``width`` characters."""
    name = printable(Path(str(path)).name) if path else "?"
    return name if len(name) <= width else "…" + name[-(width - 1) :]


class Thumbnails:
    """Thumbnails of one size, each file made once (anchors recur across a page)."""

    def __init__(self, size: int, quality: int = QUALITY) -> None:
        self.size = size
        self.quality = quality
        self._uris: dict[str, str | DataError] = {}

    def uri(self, path: Any) -> str | DataError:
        """The ``data:`` URI of the file's thumbnail, or the error that prevented it."""
        key = str(path)
        if key not in self._uris:
            try:
                if not key:
                    raise DataError("no image path given")
                self._uris[key] = data_uri(thumbnail_jpeg(key, self.size, self.quality))
            except DataError as e:
                self._uris[key] = e
        return self._uris[key]

    def img(self, path: Any, alt: str, cls: str = "") -> str:
        """An ``<img>`` of the file's thumbnail, or a placeholder ``<span>`` saying why not."""
        got = self.uri(path)
        c = f' class="{escape(cls)}"' if cls else ""
        title = escape(printable(path), quote=True)
        if isinstance(got, DataError):
            return missing(got, self.size, cls)
        return f'<img{c} src="{got}" alt="{escape(alt, quote=True)}" title="{title}">'


def missing(error: DataError, size: int, cls: str = "") -> str:
    """A grey box of ``size`` px naming why an image is not shown."""
    reason = escape(printable(getattr(error, "problem", None) or error))
    return (
        f'<span class="nothumb {escape(cls)}" style="width:{size}px;height:{size}px">'
        f"image unavailable: {reason}</span>"
    )


#: CSS of the mistakes gallery (part of the report's style sheet).
GALLERY_CSS = """
.mistake { display: flex; gap: .5em; align-items: flex-start; margin: .5em 0; padding: .4em;
           border: 1px solid #e3e3e3; border-radius: 4px; }
.cellbox { width: 104px; font-size: .75em; text-align: center; overflow-wrap: anywhere; }
.cellbox img { display: block; margin: 0 auto 2px auto; border: 1px solid #ccc; }
.query img { border: 2px solid #a00000; }
.pred { color: #a00000; } .truth { color: #006400; }
.nothumb { display: inline-block; background: #d5d5d5; color: #333; font-size: 9px;
           overflow: hidden; text-align: center; vertical-align: top; }
"""


def mistakes_gallery_html(
    mistakes: Sequence[dict[str, Any]], max_items: int = 12, size: int = 96
) -> str:
    """The most confident mistakes as rows of thumbnails: the query (true class, call,
    confidence), then its supporting anchors (label, pair probability, cosine); an anchor label in
    red has the predicted class, green the true one. Same input as
    :func:`~.gallery.mistakes_gallery_png`."""
    items = list(mistakes)[: max(0, int(max_items))]
    if not items:
        return '<p class="note">No mistakes to show.</p>'
    thumbs = Thumbnails(size)
    rows = []
    for m in items:
        true, pred = printable(m.get("true", "?")), printable(m.get("predicted", "?"))
        conf = m.get("confidence")
        conf_text = f" p={conf:.2f}" if isinstance(conf, (int, float)) else ""
        cells = [
            '<div class="cellbox query">'
            + thumbs.img(m.get("path"), f"query, true {true}")
            + f'<span class="truth">true {escape(true)}</span><br>'
            + f'<span class="pred">called {escape(pred)}{escape(conf_text)}</span><br>'
            + f"{escape(short_name(m.get('path')))}</div>"
        ]
        for a in (m.get("anchors") or [])[:5]:
            label = printable(a.get("label", "?"))
            colour = "pred" if label == pred else "truth" if label == true else ""
            pp, sim = a.get("pair_probability"), a.get("similarity")
            nums = [
                f"pair p={pp:.2f}" if isinstance(pp, (int, float)) else "",
                f"cos {sim:.3f}" if isinstance(sim, (int, float)) else "",
            ]
            cells.append(
                '<div class="cellbox">'
                + thumbs.img(a.get("path"), f"anchor {label}")
                + f'<span class="{colour}">{escape(label)}</span><br>'
                + "<br>".join(escape(t) for t in nums if t)
                + "</div>"
            )
        rows.append('<div class="mistake">' + "".join(cells) + "</div>")
    return (
        f'<p class="note">{len(items)} of {len(mistakes)} mistakes, most confident first: the '
        "query (red frame), then the anchors that supported the call; anchor labels in red have "
        "the predicted class, in green the true one.</p>" + "".join(rows)
    )
