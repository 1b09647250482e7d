"""The report and the review page in a real browser (headless Chromium): they render their
headline numbers, every embedded image decodes, nothing fails in the console, and a screenshot
shows more than a blank page. Skipped, with the reason, when no Chromium can be started
(``.ci/run`` installs the Debian package ``chromium`` when it is missing).

Set ``SIAMESE_MARROW_SCREENSHOTS=DIR`` to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import find_browser, probe, screenshot
from PIL import Image

EXE, WHY = find_browser()
pytestmark = pytest.mark.skipif(EXE is None, reason=WHY)


def keep(png: Path) -> None:
    where = os.environ.get("SIAMESE_MARROW_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(where) / png.name)


def assert_not_blank(png: Path) -> None:
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 500 and pixels.std() > 10, "the screenshot is (nearly) blank"
    assert (pixels < 128).mean() > 0.01  # text and images, not just a background


def assert_clean(found: dict) -> None:
    assert found["errors"] == [], found["errors"]
    assert found["broken"] == [], f"images that did not decode: {found['broken']}"
    assert found["css_broken"] == 0


def test_the_probe_sees_broken_images_and_errors(tmp_path: Path) -> None:
    """Not vacuous: a page with a broken image, a broken CSS image and a script error fails."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
        '.b{background-image:url("data:image/jpeg;base64,AAAA")}</style></head><body>'
        '<p>hello 0.8125</p><img alt="broken" src="data:image/png;base64,iVBORw0KGgo=">'
        '<span class="b">x</span><script>console.error("boom"); nosuch();</script></body></html>'
    )
    found = probe(EXE, page, tmp_path)
    assert found["broken"] == ["broken"] and found["css_images"] == 1
    assert found["css_broken"] == 1
    assert any("boom" in e for e in found["errors"])
    assert any("nosuch" in e for e in found["errors"])
    assert "hello 0.8125" in found["text"]


def test_report_renders_in_chromium(demo: Path, tmp_path: Path) -> None:
    page = demo / "eval" / "report.html"
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())
    found = probe(EXE, page, tmp_path)
    assert_clean(found)
    assert found["images"] >= 6  # figures and the gallery's thumbnails
    text = found["text"]
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "ece"):
        assert f"{metrics[key]:.4f}" in text, key
    assert f"{metrics['calibration']['ece']:.4f}" in text
    for heading in ("Headline metrics", "Calibration", "Abstention", "Baselines", "Galleries"):
        assert heading in text
    png = tmp_path / "report.png"
    screenshot(EXE, page, png, 1280, 2400)
    assert_not_blank(png)
    keep(png)


def test_review_page_renders_in_chromium(demo: Path, tmp_path: Path) -> None:
    from siamese_marrow.cli import main

    src = sorted((demo / "run" / "synthetic-data").rglob("*.jpg"))[::6]
    cells = tmp_path / "cells"
    cells.mkdir()
    for i, p in enumerate(src):
        shutil.copy(p, cells / f"{i:03d}_{p.name}")
    hostile = cells / '<img src=x onerror=alert(1)> "q".jpg'
    shutil.copy(src[0], hostile)
    try:
        raw = os.fsencode(cells) + b"/caf\xe9.jpg"
        shutil.copy(src[1], raw)
    except OSError:
        pass  # a file system that refuses non-UTF-8 names
    n = sum(1 for _ in cells.iterdir())
    page = tmp_path / "review.html"
    argv = ["classify", "--bank", str(demo / "bank"), str(cells), "--html", str(page),
            "--abstain-below", "0.2", "-o", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    n_unc = sum(r["prediction"] == "uncertain" for r in records)
    found = probe(EXE, page, tmp_path)
    assert_clean(found)
    assert found["images"] == n  # one thumbnail per cell
    assert found["css_images"] >= 5  # the anchors, each once
    text = found["text"]
    assert f"{n} cells classified, {n_unc} uncertain." in text
    assert '<img src=x onerror=alert(1)> "q".jpg' in text  # shown as text, not run
    png = tmp_path / "review.png"
    screenshot(EXE, page, png, 1400, 2000)
    assert_not_blank(png)
    keep(png)
