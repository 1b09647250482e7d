"""One self-contained HTML report: metrics tables, embedded figures and the run's config.

The file has inline CSS, images as base64 ``data:`` URIs, no scripts and no link to anything
outside itself, so it can be mailed, archived or opened offline. Every text value is escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from ..data.classes import MATEK_CLASSES
from ..utils import atomic_write_text, printable
from .reliability import abstention_section, calibration_section
from .tables import fmt as _fmt
from .tables import table as _table
from .thumbs import GALLERY_CSS, mistakes_gallery_html

#: The four figures always reported together (accuracy alone flatters imbalanced data).
HEADLINE_COLUMNS = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_weighted", "weighted F1"),
    ("f1_macro", "macro F1"),
)

_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}

#: Figure names containing one of these go to the "Galleries" section.
_GALLERY_WORDS = ("gallery", "mistake", "retrieval_example", "neighbour", "neighbor")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.5em auto; max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4f81bd; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #1f3f66; }
h3 { font-size: 1.05em; }
nav a { margin-right: 1em; color: #1f3f66; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #eef2f7; }
td.t, th.t { text-align: left; }
tr:nth-child(even) td { background-color: #fafafa; }
td.low { color: #a00000; font-weight: bold; }
table.headline td { font-size: 1.2em; font-weight: bold; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
details { margin: .6em 0; }
summary { cursor: pointer; color: #1f3f66; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: .8em; overflow-x: auto;
      font-size: .85em; }
p.note { color: #555; font-size: .9em; }
.missing { color: #a00000; }
p.warn { background: #fff4e0; border-left: 4px solid #e08a00; padding: .4em .8em; }
code { background: #f0f0f0; padding: 0 .2em; }
"""


def _headline_row(m: Mapping[str, Any]) -> list[str]:
    return [_fmt(m.get(k)) for k, _ in HEADLINE_COLUMNS]


def _headline_section(metrics: Mapping[str, Any]) -> str:
    headers = [label for _, label in HEADLINE_COLUMNS] + ["images"]
    table = _table(headers, [_headline_row(metrics) + [_fmt(metrics.get("n"))]], "headline", 0)
    return (
        '<h2 id="headline">Headline metrics</h2>'
        + table
        + '<p class="note">Balanced accuracy is the mean recall over classes; on imbalanced '
        "data, accuracy alone flatters a model that ignores the rare classes.</p>"
    )


def _per_class_section(metrics: Mapping[str, Any]) -> str:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return ""
    codes = [str(c) for c in metrics.get("classes", per_class) if c in per_class]
    rows = []
    for code in codes:
        pc = per_class[code]
        name = MATEK_CLASSES.get(code, ("",))[0]
        recall = pc.get("recall")
        support = pc.get("support")
        rec_cell: Any = _fmt(recall)
        if isinstance(recall, (int, float)) and support and recall < 0.5:
            rec_cell = (rec_cell, "low")
        rows.append(
            [
                escape(code),
                escape(name) or "&mdash;",
                _fmt(support),
                _fmt(pc.get("precision")),
                rec_cell,
                _fmt(pc.get("f1")),
            ]
        )
    table = _table(
        ["class", "cell type", "support", "precision", "recall", "F1"], rows, text_cols=2
    )
    return (
        '<h2 id="per-class">Per class</h2>'
        + table
        + '<p class="note">Recall below 0.5 is shown in red.</p>'
        + _confusion_table(metrics)
    )


def _confusion_table(metrics: Mapping[str, Any]) -> str:
    cm = metrics.get("confusion_matrix")
    classes = [str(c) for c in metrics.get("classes", [])]
    if not cm or len(cm) != len(classes):
        return ""
    headers = ["true \\ predicted"] + classes
    rows = [[escape(c)] + [_fmt(int(v)) for v in row] for c, row in zip(classes, cm, strict=True)]
    return (
        "<details><summary>Confusion matrix (counts; rows true, columns predicted)</summary>"
        + _table(headers, rows)
        + "</details>"
    )


@dataclass
class Published:
    """Published figures shown for orientation under ``heading``: ``name -> headline metrics``."""

    heading: str
    rows: Mapping[str, Mapping[str, Any]]
    note: str = ""


def _baselines_section(
    metrics: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    published: Published | None,
) -> str:
    if not baselines and not published:
        return ""
    headers = ["model"] + [label for _, label in HEADLINE_COLUMNS]
    rows = [["<strong>this model</strong>"] + _headline_row(metrics)]
    for name, m in baselines.items():
        rows.append([escape(str(name))] + _headline_row(m or {}))
    out = '<h2 id="baselines">Baselines</h2>' + _table(headers, rows)
    if published:
        out += f"<h3>{escape(published.heading)}</h3>"
        rows = [[escape(str(n))] + _headline_row(m or {}) for n, m in published.rows.items()]
        out += _table(headers, rows)
        if published.note:
            out += f'<p class="note">{escape(published.note)}</p>'
    return out


def _retrieval_section(retrieval: Mapping[str, Any]) -> str:
    scalars = [
        [escape(str(k)), _fmt(v)]
        for k, v in retrieval.items()
        if not isinstance(v, (dict, list, tuple))
    ]
    nested = {k: v for k, v in retrieval.items() if isinstance(v, (dict, list, tuple))}
    out = '<h2 id="retrieval">Retrieval</h2>'
    if scalars:
        out += _table(["metric", "value"], scalars)
    for k, v in nested.items():
        out += (
            f"<details><summary>{escape(str(k))}</summary><pre>"
            f"{escape(json.dumps(v, indent=2, default=str))}</pre></details>"
        )
    return out


def _extra_tables_section(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    out = '<h2 id="tables">Tables</h2>'
    for name, rows in tables.items():
        out += f"<h3>{escape(str(name))}</h3>"
        rows = list(rows or [])
        if not rows:
            out += '<p class="note">(empty)</p>'
            continue
        cols: list[str] = []
        for r in rows:
            cols.extend(str(k) for k in r if str(k) not in cols)
        body = [[_fmt(_get(r, c)) for c in cols] for r in rows]
        out += _table(cols, body)
    return out


def _get(row: Mapping[str, Any], col: str) -> Any:
    for k, v in row.items():
        if str(k) == col:
            return v
    return None


def _image_tag(name: str, path: Path) -> str:
    path = Path(path)
    caption = escape(str(name))
    mime = _MIME.get(path.suffix.lower())
    try:
        if mime is None:
            raise OSError(f"unsupported image type {path.suffix or '(none)'}")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e)
        return (
            f'<figure><p class="missing">figure {caption} unavailable: '
            f"{escape(path.name)}: {escape(str(reason))}</p></figure>"
        )
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _is_gallery(name: str) -> bool:
    low = str(name).lower()
    return any(w in low for w in _GALLERY_WORDS)


def _config_text(config: Mapping[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - any object yaml cannot represent: fall back to JSON
        return json.dumps(config, indent=2, default=str)


def _plain(obj: Any) -> Any:
    """Config values as YAML-safe builtins (paths and other objects become strings)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _config_section(config: Mapping[str, Any] | None) -> str:
    if config is None:
        return '<h2 id="config">Config</h2><p class="note">No config recorded.</p>'
    return (
        '<h2 id="config">Config</h2><details><summary>Resolved config</summary>'
        f"<pre>{escape(_config_text(config))}</pre></details>"
    )


def _sections(
    metrics: Mapping[str, Any],
    figures: Mapping[str, Path],
    baselines: Mapping[str, Mapping[str, Any]] | None,
    published: Published | None,
    retrieval: Mapping[str, Any] | None,
    extra_tables: Mapping[str, Sequence[Mapping[str, Any]]] | None,
    mistakes: Sequence[Mapping[str, Any]] | None,
) -> list[tuple[str, str, str]]:
    """``(anchor, nav label, html)`` of every section, in reading order ("" = left out)."""

    def named(word: str) -> dict[str, Path]:
        return {k: v for k, v in figures.items() if str(k).lower().startswith(word)}

    calibration, abstention = named("reliability"), named("risk-coverage")
    plain = {
        k: v
        for k, v in figures.items()
        if not _is_gallery(k) and k not in calibration and k not in abstention
    }
    galleries = {k: v for k, v in figures.items() if _is_gallery(k)}
    gallery_html = _images(galleries)
    if mistakes is not None:
        gallery_html += "<h3>The most confident mistakes</h3>" + mistakes_gallery_html(mistakes)
    return [
        ("headline", "Headline", _headline_section(metrics)),
        ("calibration", "Calibration", _with(calibration_section(metrics), calibration)),
        ("abstention", "Abstention", _with(abstention_section(metrics), abstention)),
        ("per-class", "Per class", _per_class_section(metrics)),
        ("baselines", "Baselines", _baselines_section(metrics, baselines or {}, published)),
        ("retrieval", "Retrieval", _retrieval_section(retrieval) if retrieval else ""),
        ("tables", "Tables", _extra_tables_section(extra_tables) if extra_tables else ""),
        ("figures", "Figures", _section("figures", "Figures", _images(plain))),
        ("galleries", "Galleries", _section("galleries", "Galleries", gallery_html)),
    ]


def _with(section: str, figures: Mapping[str, Path]) -> str:
    return section + _images(figures) if section else ""


def _images(figures: Mapping[str, Path]) -> str:
    return "".join(_image_tag(k, v) for k, v in figures.items())


def _section(anchor: str, heading: str, body: str) -> str:
    return f'<h2 id="{anchor}">{escape(heading)}</h2>{body}' if body else ""


def render_report(
    *,
    title: str,
    config: Mapping[str, Any] | None,
    metrics: Mapping[str, Any],
    figures: Mapping[str, Path] | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    retrieval: Mapping[str, Any] | None = None,
    extra_tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    published: Published | None = None,
    mistakes: Sequence[Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as an HTML5 string (see :func:`write_report`)."""
    parts = _sections(
        metrics, figures or {}, baselines, published, retrieval, extra_tables, mistakes
    )
    parts = [p for p in parts if p[2]] + [("config", "Config", _config_section(config))]
    links = "".join(f'<a href="#{a}">{escape(label)}</a>' for a, label, _ in parts)
    warn = "".join(f'<p class="warn">{escape(str(n))}</p>' for n in notes)
    t = escape(str(title))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{t}</title><style>{_CSS}{GALLERY_CSS}</style></head>\n"
        f"<body><h1>{t}</h1><nav>{links}</nav>{warn}\n"
        + "\n".join(p[2] for p in parts)
        + "\n</body></html>\n"
    )


def write_report(out_html: str | Path, **parts: Any) -> Path:
    """Write one self-contained HTML5 report and return its path; ``parts`` are the keyword
    arguments of :func:`render_report`.

    Sections: headline metrics (accuracy, balanced accuracy, weighted F1, macro F1, together),
    ``notes`` as warnings under the title, calibration (ECE before and after a temperature) and
    abstention (the ``--abstain-below`` thresholds reaching given accuracies) when ``metrics``
    has them (figures named "Reliability..." and "Risk-coverage..." are shown in these two
    sections), per-class table (with the cell type's full name where known and the confusion
    counts), baselines (``name -> headline metrics``, this run's own, on the same images) then
    ``published`` figures under their own heading, retrieval metrics, ``extra_tables``
    (``name -> rows``), figures, galleries (figures whose name mentions gallery or mistake, and
    ``mistakes`` as JPEG thumbnails) and the config as a collapsible YAML block. Images are
    embedded as base64 ``data:`` URIs; a figure file that is missing is reported in place. The
    file is written atomically.
    """
    out_html = Path(out_html)
    text = render_report(**parts)
    atomic_write_text(out_html, printable(text))  # valid UTF-8 even for non-UTF-8 file names
    return out_html
