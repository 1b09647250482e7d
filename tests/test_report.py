"""Report figures and the self-contained HTML report."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamese_marrow.engine.metrics import classification_metrics
from siamese_marrow.report import (
    confusion_matrix_png,
    mistakes_gallery_png,
    per_class_recall_png,
    training_curves_png,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


@pytest.fixture
def metrics() -> dict:
    return classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["BLA", "LYT", "MON"])


def test_metrics_by_hand(metrics: dict) -> None:
    assert metrics["n"] == 5
    assert metrics["accuracy"] == pytest.approx(0.6)
    # recalls: BLA 1/2, LYT 2/2, MON 0/1
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["per_class"]["LYT"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["BLA"]["support"] == 2
    # F1: BLA 0.5, LYT 0.8, MON 0 -> macro 1.3/3, weighted (2*0.5 + 2*0.8 + 0)/5
    assert metrics["f1_macro"] == pytest.approx(1.3 / 3)
    assert metrics["f1_weighted"] == pytest.approx(2.6 / 5)


def assert_png(path: Path, min_side: int = 200) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024
    with Image.open(path) as img:
        img.load()
        w, h = img.size
    assert min_side <= w <= 5000 and min_side <= h <= 8000, (w, h)
    return w, h


def write_log(path: Path, epochs: int) -> Path:
    lines = []
    for e in range(1, epochs + 1):
        rec = {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_bce_concat": 0.5 / e,
            "val_accuracy": 0.5 + 0.1 * e,
            "val_balanced_accuracy": 0.4 + 0.1 * e,
            "val_pair_auc": 0.8,
            "tau": 1.0 / e,
            "lr": 1e-3,
        }
        if e == 2:
            del rec["val_pair_auc"], rec["tau"]  # keys may be missing
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_figures_are_pngs(tmp_path: Path, metrics: dict) -> None:
    cm = confusion_matrix_png(metrics, tmp_path / "cm.png")
    assert cm == tmp_path / "cm.png"
    w, h = assert_png(cm)
    assert 0.5 < w / h < 2.0
    assert_png(per_class_recall_png(metrics, tmp_path / "recall.png"))
    assert_png(training_curves_png(write_log(tmp_path / "m.jsonl", 3), tmp_path / "c3.png"))
    assert_png(training_curves_png(write_log(tmp_path / "one.jsonl", 1), tmp_path / "c1.png"))
    # a run interrupted mid-line: the truncated last record is skipped
    log = write_log(tmp_path / "cut.jsonl", 2)
    log.write_text(log.read_text() + '{"epoch": 3, "train_lo')
    assert_png(training_curves_png(log, tmp_path / "cut.png"))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_confusion_matrix_with_abstentions_and_absent_class(tmp_path: Path) -> None:
    m = classification_metrics([0, 0, 1, 1], [0, -1, 1, 0], ["BLA", "LYT", "XYZ"])
    assert m["per_class"]["BLA"]["support"] == 2 and m["confusion_matrix"][0] == [1, 0, 0]
    assert_png(confusion_matrix_png(m, tmp_path / "cm.png"))
    assert_png(per_class_recall_png(m, tmp_path / "r.png"))


def test_mistakes_gallery_handles_missing_images(tmp_path: Path, bm7: Path) -> None:
    blasts = sorted((bm7 / "BLA").glob("*.jpg"))[:2]
    lymphs = sorted((bm7 / "LYT").glob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    mistakes = [
        {
            "path": str(blasts[0]),
            "true": "BLA",
            "predicted": "LYT",
            "confidence": 0.71,
            "anchors": [
                {"path": str(p), "label": "LYT", "similarity": 0.9, "pair_probability": 0.8}
                for p in lymphs
            ]
            + [
                {"path": str(blasts[1]), "label": "BLA", "similarity": 0.5, "pair_probability": 0.4}
            ],
        },
        {
            "path": str(tmp_path / "does_not_exist.jpg"),
            "true": "LYT",
            "predicted": "BLA",
            "confidence": 0.55,
            "anchors": [
                {"path": str(bad), "label": "BLA", "similarity": 0.7, "pair_probability": 0.6}
            ],
        },
    ]
    out = mistakes_gallery_png(mistakes, tmp_path / "gallery.png")
    w, h = assert_png(out)
    assert w > h  # two rows of a query and three anchors
    assert_png(mistakes_gallery_png(mistakes, tmp_path / "one.png", max_items=1), min_side=150)
    assert_png(mistakes_gallery_png([], tmp_path / "none.png"), min_side=150)


class TagBalance(HTMLParser):
    """Checks that every non-void element is closed in order; collects attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report(tmp_path: Path, metrics: dict) -> None:
    evil = classification_metrics([0, 1, 1], [0, 1, 0], ["BLA", "<script>alert(1)</script>"])
    figures = {
        "confusion matrix": confusion_matrix_png(metrics, tmp_path / "cm.png"),
        "recall": per_class_recall_png(evil, tmp_path / "recall.png"),
        "mistakes gallery": mistakes_gallery_png([], tmp_path / "gallery.png"),
        "gone": tmp_path / "never_written.png",
    }
    config = {
        "model": {"backbone": "tf_efficientnet_lite0"},
        "note": "<b>x</b> & y",
        "data": {"root": Path("/data/bm7")},
    }
    out = write_report(
        tmp_path / "sub" / "report.html",
        title="Run <1> & co",
        config=config,
        metrics=evil,
        figures=figures,
        baselines={
            "Matek 2021": {"accuracy": 0.73, "balanced_accuracy": 0.69, "f1_weighted": 0.75},
            "<img src=x>": {"accuracy": 0.5},
        },
        retrieval={"precision_at_1": 0.8125, "map_at_r": 0.5, "per_k": {"1": 0.8}},
        extra_tables={"few-shot": [{"k": 1, "siamese": 0.51}, {"k": 5, "prototype": 0.7}]},
    )
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    assert not list(out.parent.glob(".*.tmp"))
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")

    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []

    # self-contained: only data: URIs and in-page anchors; no scripts, nothing remote
    for tag, key, value in parser.attrs:
        if key in ("src", "href"):
            assert value and (value.startswith("data:") or value.startswith("#")), (tag, value)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "http" not in text.lower()
    assert "@import" not in text and "url(" not in text
    assert sum(1 for t, k, v in parser.attrs if t == "img" and k == "src") == 3

    # escaped: the malicious class code, title, baseline name and config values appear as text
    body = "".join(parser.text)
    assert "<script>alert(1)</script>" in body and "&lt;script&gt;" in text
    assert "<img src=x>" in body
    assert "Run <1> & co" in body
    assert "<b>x</b> & y" in body
    assert "never_written.png" in body  # a missing figure is reported, not fatal

    # the values: the four headline metrics together, per-class figures, full names, baselines
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro"):
        assert f"{evil[key]:.4f}" in body
    for label in ("accuracy", "balanced accuracy", "weighted F1", "macro F1", "blast"):
        assert label in body
    assert "BLA" in body and "0.8125" in body and "Matek 2021" in body and "0.6900" in body
    assert "tf_efficientnet_lite0" in body and "/data/bm7" in body
    assert re.search(r"<details>\s*<summary>Resolved config</summary>\s*<pre>", text)


def test_html_report_minimal(tmp_path: Path, metrics: dict) -> None:
    out = write_report(tmp_path / "r.html", title="t", config=None, metrics=metrics, figures={})
    text = out.read_text(encoding="utf-8")
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    body = "".join(parser.text)
    for code in ("BLA", "LYT", "MON"):
        assert code in body
    assert "0.6000" in body and "0.5000" in body  # accuracy, balanced accuracy
    assert "No config recorded" in body


def test_calibration_abstention_and_published_sections(tmp_path: Path, metrics: dict) -> None:
    from siamese_marrow.data.classes import CLASS_CODES
    from siamese_marrow.engine.evaluate import published_for
    from siamese_marrow.engine.reliability import abstention_summary, reliability_summary
    from siamese_marrow.report import reliability_png, risk_coverage_png

    probs = [[0.87654321, 0.1, 0.02345679], [0.65439999, 0.3, 0.04560001], [0.2, 0.7, 0.1]]
    probs.append([0.5, 0.1, 0.4])
    y = [0, 1, 1, 2]  # right, wrong, right, wrong
    m = dict(metrics)
    m.update(reliability_summary(np.array(probs), y, n_bins=2))
    m["nll"] = 1.25
    m["calibration"] = {
        "temperature": 1.5,
        "source": "fitted on <the> validation split",
        **reliability_summary(
            np.array(probs) ** 0.5 / np.sum(np.array(probs) ** 0.5, 1)[:, None], y, 2
        ),
        "nll": 1.0,
    }
    m.update(abstention_summary(np.array(probs), y, (0.9, 0.6)))
    m["risk_coverage_on"] = "the model's own g"
    # by hand: kept at >= 0.8765 is 1/1 right; >= 0.7: 2/2; >= 0.6544: 2/3; >= 0.5: 2/4
    assert [r["threshold"] for r in m["abstention_thresholds"]] == [
        pytest.approx(0.7),
        pytest.approx(0.65439999),
    ]
    figures = {
        "Reliability of g": reliability_png(m, tmp_path / "rel.png"),
        "Risk-coverage": risk_coverage_png(m, tmp_path / "rc.png"),
    }
    for png in figures.values():
        assert_png(png)
    out = write_report(
        tmp_path / "r.html",
        title="t",
        config=None,
        metrics=m,
        figures=figures,
        baselines={"Prototypes on the same embedding": {"accuracy": 0.4}},
        published=published_for(["BLA", "LYT", "MON"]),
        notes=["3 of the 5 images scored are anchors"],
    )
    text = out.read_text(encoding="utf-8")
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    body = "".join(parser.text)
    assert f"{m['ece']:.4f}" in body and f"{m['calibration']['ece']:.4f}" in body
    assert "temperature T = 1.5" in body and "fitted on <the> validation split" in body
    assert "0.7000" in body and "0.6543" in body  # thresholds, rounded down
    assert "3 of the 5 images scored are anchors" in body
    # the plots sit in their sections, before the per-class table
    assert text.index("data:image/png") < text.index('id="per-class"')
    # own baselines first, then the published figures under a heading saying they differ
    assert body.index("Prototypes on the same embedding") < body.index("different task")
    assert "Published figures: different task: 21 classes (this run: 3)" in body
    assert "Matek 2021" in body
    same = published_for(CLASS_CODES)
    assert same.heading.startswith("Published figures on the same 21 classes")
