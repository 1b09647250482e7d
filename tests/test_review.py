"""The review page of ``classify --html`` and the report's thumbnail gallery, without a browser:
order, escaping of hostile names, non-UTF-8 file names, one copy of each anchor's thumbnail,
placeholders for images that cannot be shown, and what the page says."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image
from test_report import TagBalance

from siamese_marrow.report import mistakes_gallery_html, write_review
from siamese_marrow.report.review import review_order

EVIL = "<img src=x onerror=alert(1)>\"&'"


def cell(path: Path, colour: tuple[int, int, int], size: int = 120) -> str:
    img = Image.new("RGB", (size, size), colour)
    img.save(path)
    return str(path)


def record(path: str, prediction: str, probs: dict[str, float], anchors: list[dict]) -> dict:
    return {"path": path, "prediction": prediction, "probabilities": probs, "anchors": anchors}


def test_review_order() -> None:
    recs = [
        record("a", "BLA", {"BLA": 0.9, "EOS": 0.1}, []),
        record("b", "uncertain", {"BLA": 0.45, "EOS": 0.55}, []),
        record("c", "EOS", {"BLA": 0.2, "EOS": 0.8}, []),
        record("d", "BLA", {"BLA": 0.6, "EOS": 0.4}, []),
        record("e", "uncertain", {"BLA": 0.4, "EOS": 0.3, "LYT": 0.3}, []),
    ]
    # uncertain first (least confident first), then BLA, then EOS; least confident first
    assert [recs[i]["path"] for i in review_order(recs, ["BLA", "EOS"])] == list("ebdac")
    assert [recs[i]["path"] for i in review_order(recs, ["EOS", "BLA"])] == list("ebcda")


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    out = {
        "q1": cell(folder / "q1.jpg", (200, 40, 40)),
        "q2": cell(folder / f"{EVIL}.png", (40, 200, 40)),
        "anchor": cell(folder / "anchor.jpg", (40, 40, 200)),
    }
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"  # a file name that is not UTF-8
    try:
        with open(raw, "wb") as f:
            Image.new("RGB", (90, 60), (90, 90, 90)).save(f, format="JPEG")
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    out["latin1"] = os.fsdecode(raw)
    out["broken"] = str(folder / "broken.jpg")
    Path(out["broken"]).write_bytes(b"not an image")
    return out


def test_review_page(images: dict[str, str], tmp_path: Path) -> None:
    anchor = {"path": images["anchor"], "label": "BLA", "similarity": 0.9, "pair_probability": 0.8}
    bad_anchor = {**anchor, "path": images["broken"], "pair_probability": 0.7}
    classes = ["BLA", EVIL]
    recs = [
        record(images["q1"], "BLA", {"BLA": 0.93, EVIL: 0.07}, [anchor, bad_anchor]),
        record(images["q2"], EVIL, {"BLA": 0.2, EVIL: 0.8}, [{**anchor, "label": EVIL}]),
        record(images["latin1"], "uncertain", {"BLA": 0.51, EVIL: 0.49}, [anchor]),
        record(str(tmp_path / "gone.jpg"), "BLA", {"BLA": 0.7, EVIL: 0.3}, [anchor]),
    ]
    out = tmp_path / "review.html"
    info = write_review(out, recs, title="review <of> cells", classes=classes, about=[EVIL])
    assert info["cells"] == 4 and info["bytes"] == out.stat().st_size
    text = out.read_text(encoding="utf-8")  # valid UTF-8 despite the file name
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    # self-contained and inert: data: URIs only, no script, nothing remote
    assert "script" not in parser.tags and "http" not in text.lower()
    srcs = [v for t, k, v in parser.attrs if t == "img" and k == "src"]
    assert len(srcs) == 3  # the missing query image is a placeholder, not a broken <img>
    for src in srcs:
        assert src.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "JPEG" and max(im.size) <= 80
    # the anchor that supports four cells is embedded once, as a CSS class
    assert text.count("background-image:url(") == 1
    assert len(re.findall(r'class="th a0"', text)) == 4
    # hostile names are text, never markup; the non-UTF-8 byte is shown as \xe9
    body = "".join(parser.text)
    assert EVIL in body and parser.tags.count("img") == 3  # no <img> injected by a name
    assert "caf\\xe9.jpg" in body
    assert "image unavailable" in body and "gone.jpg" in body
    # what the page says: the counts, the uncertain call first, then BLA, then the other class
    assert "4 cells classified, 1 uncertain." in body
    sections = re.findall(r'<h2 id="s-([^"]+)">', text)
    assert sections == ["uncertain", "c0", "c1"]
    assert body.index("caf\\xe9") < body.index("gone.jpg") < body.index("q1.jpg")


def test_review_page_of_nothing(tmp_path: Path) -> None:
    info = write_review(tmp_path / "r.html", [], classes=["BLA"])
    assert info["cells"] == 0 and "0</strong> cells classified" in (tmp_path / "r.html").read_text()


def test_mistakes_gallery_thumbnails(images: dict[str, str]) -> None:
    mistakes = [
        {
            "path": images["q2"],
            "true": EVIL,
            "predicted": "BLA",
            "confidence": 0.71,
            "anchors": [
                {
                    "path": images["anchor"],
                    "label": "BLA",
                    "similarity": 0.9,
                    "pair_probability": 0.8,
                },  # fmt: skip
                {
                    "path": images["broken"],
                    "label": EVIL,
                    "similarity": 0.5,
                    "pair_probability": 0.4,
                },  # fmt: skip
            ],
        }
    ]
    html = mistakes_gallery_html(mistakes)
    parser = TagBalance()
    parser.feed(f"<div>{html}</div>")
    assert parser.errors == [] and parser.stack == []
    srcs = [v for t, k, v in parser.attrs if t == "img" and k == "src"]
    assert len(srcs) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    body = "".join(parser.text)
    assert EVIL in body and "called BLA p=0.71" in body and "pair p=0.80" in body
    assert "image unavailable" in body
    assert "No mistakes" in mistakes_gallery_html([])
