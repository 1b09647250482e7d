"""Escaped HTML table cells and tables, shared by the report and the review page."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from html import escape
from typing import Any


def fmt(v: Any) -> str:
    """A table cell's text, escaped: floats to 4 decimals, None as a dash."""
    if v is None:
        return "&mdash;"
    if isinstance(v, bool):
        return escape(str(v))
    if isinstance(v, numbers.Integral):
        return escape(str(int(v)))
    if isinstance(v, numbers.Real):
        v = float(v)
        return "&mdash;" if math.isnan(v) else escape(f"{v:.4f}")
    if isinstance(v, (dict, list, tuple)):
        return escape(json.dumps(v, default=str))
    return escape(str(v))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", text_cols: int = 1
) -> str:
    """Rows of pre-escaped cells; the first ``text_cols`` columns are left-aligned."""
    c = f' class="{cls}"' if cls else ""
    left = ' class="t"'
    head = "".join(
        f"<th{left if i < text_cols else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, tuple):  # (html, css class)
                cells.append(f'<td class="{cell[1]}">{cell[0]}</td>')
            else:
                cells.append(f"<td{left if i < text_cols else ''}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
