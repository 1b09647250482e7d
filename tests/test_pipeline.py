"""End to end through the command line: demo (synth -> train -> bank -> classify -> few-shot ->
evaluate -> report), then the commands scripts rely on, with their documented output shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import TINY_MODEL, cli, set_args
from PIL import Image


def test_demo_writes_metrics_figures_and_report(demo: Path) -> None:
    summary = json.loads((demo / "demo_summary.json").read_text())
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "f1_weighted",
        "f1_macro",
        "per_class",
        "confusion_matrix",
        "classes",
    ):
        assert key in metrics, key
    assert metrics["classes"] == summary["classes"]
    n = len(metrics["classes"])
    assert len(metrics["confusion_matrix"]) == n and all(
        len(r) == n for r in metrics["confusion_matrix"]
    )
    # abstained calls ("uncertain") fall in no column
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"] - metrics["abstained"]
    supports = sum(v["support"] for v in metrics["per_class"].values())
    assert supports == metrics["n"]
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    assert "map_at_r" in metrics["retrieval"]
    html = (demo / "eval" / "report.html").read_text()
    assert "<html" in html and "balanced accuracy" in html.lower()
    pngs = ("confusion.png", "recall.png", "curves.png", "reliability.png", "risk_coverage.png")
    for png in (*pngs, "mistakes_gallery.png"):
        data = (demo / "eval" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
    assert summary["fewshot"]["shots"] == 5

    # calibration and abstention, consistent with the predictions written beside them
    records = json.loads((demo / "eval" / "predictions.json").read_text())
    assert sum(b["count"] for b in metrics["reliability"]) == metrics["n"] == len(records)
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    cal = metrics["calibration"]  # the demo has a test split: T fitted on the validation split
    assert cal["temperature"] > 0 and "validation split" in cal["source"]
    assert sum(b["count"] for b in cal["reliability"]) == metrics["n"]
    curve = metrics["risk_coverage"]
    assert curve[-1]["coverage"] == 1.0 and curve[-1]["kept"] == metrics["n"]
    assert curve[-1]["accuracy"] == pytest.approx(metrics["accuracy"])  # nothing abstained
    kept = sum(max(r["probabilities"].values()) >= curve[0]["threshold"] for r in records)
    assert kept == curve[0]["kept"]
    assert [t["target_accuracy"] for t in metrics["abstention_thresholds"]] == [0.9, 0.95, 0.99]
    assert set(metrics["own_baselines"]) == {
        "Prototypes on the same embedding (same anchors, same images)",
        "1-NN on the same embedding (same anchors, same images)",
    }
    # light: figures as PNG (line art), the gallery as JPEG thumbnails, not as one big PNG
    assert html.count('src="data:image/png') == len(pngs)
    assert html.count('src="data:image/jpeg') >= 2
    assert len(html) < 1_500_000
    assert "Published" not in html  # synthetic cells: no published figures at all


def _images(demo: Path, label: str, n: int) -> list[str]:
    return sorted(str(p) for p in (demo / "run" / "synthetic-data" / label).glob("*.jpg"))[:n]


def test_classify_jsonl_and_csv(demo: Path) -> None:
    imgs = _images(demo, "EOS", 2) + _images(demo, "LYT", 1)
    r = cli("classify", "--bank", str(demo / "bank"), *imgs, "--abstain-below", "0.999999")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["path"] for x in lines] == imgs
    for rec in lines:
        assert set(rec) == {"path", "prediction", "probabilities", "anchors"}
        assert rec["prediction"] == "uncertain" or max(rec["probabilities"].values()) >= 0.999999
        assert abs(sum(rec["probabilities"].values()) - 1) < 1e-4
        a = rec["anchors"][0]
        assert set(a) >= {"path", "label", "similarity", "pair_probability"}
    r = cli("classify", "--bank", str(demo / "bank"), imgs[0], "--format", "csv")
    assert r.returncode == 0 and r.stdout.startswith("path,prediction,p_")


def test_bank_add_then_classify_new_class_and_search_gallery(demo: Path, tmp_path: Path) -> None:
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(demo / "bank", bank)
    novel = demo / "novel"  # the demo's unseen class, written by the demo
    (label,) = [p.name for p in novel.iterdir() if p.is_dir()]
    imgs = sorted(str(p) for p in (novel / label).glob("*.jpg"))
    r = cli("bank", "add", "--bank", str(bank), "--label", label, *imgs[:5])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["classes"][label] == 5
    r = cli("classify", "--bank", str(bank), imgs[5])
    assert label in json.loads(r.stdout)["probabilities"]
    r = cli("search", "--bank", str(bank), imgs[6], "-k", "4", "--gallery", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    nb = json.loads(r.stdout)["neighbours"]
    assert len(nb) == 4 and nb[0]["similarity"] >= nb[-1]["similarity"]
    assert Image.open(tmp_path / "g.png").size[0] > 100


def test_fewshot_eval_json_shape(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "fs.json"
    r = cli(
        "fewshot-eval",
        "--run",
        str(demo / "run"),
        "--data",
        str(demo / "run" / "synthetic-data"),
        "--n-way",
        "3",
        "--k-shot",
        "1,2",
        "--n-query",
        "2",
        "--episodes",
        "4",
        "--json",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["n_way"] == 3 and res["episodes"] == 4
    for method in ("siamese", "prototype", "nn1"):
        for k in ("1", "2"):
            cell = res["results"][method][k]
            assert 0 <= cell["mean"] <= 1 and cell["ci95"] >= 0


def test_evaluate_refuses_mismatched_bank(demo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    r = cli(
        "train",
        "--config",
        "configs/demo.yaml",
        "--out",
        str(other),
        "--quiet",
        *set_args([*TINY_MODEL, "train.epochs=1", "data.synth_per_class=6"]),
    )
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", "--run", str(other), "--bank", str(demo / "bank"), "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "bank" in r.stderr.lower()


def test_classify_html_review_page(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    imgs = _images(demo, "EOS", 3) + _images(demo, "LYT", 3) + _images(demo, "BLA", 2)
    page = tmp_path / "review.html"
    r = cli("classify", "--bank", str(demo / "bank"), *imgs, "--html", str(page),
            "--abstain-below", "0.25", "-o", str(tmp_path / "out.jsonl"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"review page {page}: 8 cells" in r.stderr
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    text = page.read_text(encoding="utf-8")
    n_unc = sum(x["prediction"] == "uncertain" for x in records)
    assert f"<strong>8</strong> cells classified, <strong>{n_unc}</strong> uncertain" in text
    assert text.count('<div class="cell') == 8 and text.count('<img src="data:image/jpeg') == 8
    # uncertain calls first, then by class in the bank's order, least confident first
    names = [Path(x["path"]).name for x in records]
    shown = [n for n in re.findall(r'<div title="[^"]*">([^<]*)</div>', text)]
    bank_classes = json.loads((demo / "bank" / "manifest.json").read_text())["classes"]
    order = {c: i for i, c in enumerate(["uncertain", *bank_classes])}
    expect = sorted(
        records, key=lambda x: (order[x["prediction"]], max(x["probabilities"].values()))
    )
    assert shown == [Path(x["path"]).name for x in expect] and sorted(shown) == sorted(names)

    # an output over an input image is refused before anything is written
    from siamese_marrow.cli import main

    for option in ("--html", "-o"):
        assert main(["classify", "--bank", str(demo / "bank"), imgs[0], option, imgs[0]]) == 2
        err = capsys.readouterr().err
        assert imgs[0] in err and "is one of the input images" in err
        assert len(err.splitlines()) == 1
        assert Image.open(imgs[0]).size[0] > 10  # still an image


def test_bank_calibrate_then_classify_uses_the_temperature(demo: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from siamese_marrow.engine.banks import bank_info, open_bank
    from siamese_marrow.engine.evaluate import evaluate
    from siamese_marrow.engine.predict import classify_paths
    from siamese_marrow.index.calibration import apply_temperature

    bank = tmp_path / "bank"
    shutil.copytree(demo / "bank", bank)
    imgs = _images(demo, "EOS", 2) + _images(demo, "MON", 2)
    before = classify_paths(open_bank(bank), imgs)
    r = cli("bank", "calibrate", "--bank", str(bank), "--quiet")
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)
    assert bank_info(bank)["calibration"]["temperature"] == fit["temperature"] > 0
    assert "validation split" in fit["fitted_on"] and fit["images"] >= 20
    assert fit["left_out"] == {}  # the demo's bank is its training split: no anchor is fitted on
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9
    after = classify_paths(open_bank(bank), imgs)
    g0 = np.array([list(x["probabilities"].values()) for x in before])
    g1 = np.array([list(x["probabilities"].values()) for x in after])
    np.testing.assert_allclose(g1, apply_temperature(g0, fit["temperature"]), atol=2e-5)
    assert [x["prediction"] for x in after] == [x["prediction"] for x in before]
    # evaluate with the calibrated bank reports the bank's own temperature
    evaluate(demo / "run", bank=bank, out=tmp_path / "eval", progress=False)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["calibration"]["source"].startswith("stored in the bank")
    assert metrics["calibration"]["temperature"] == fit["temperature"]
    assert "temperature" in metrics["risk_coverage_on"]


def test_bank_calibrate_leaves_anchors_out(demo: Path, tmp_path: Path) -> None:
    import shutil

    from siamese_marrow.engine.calibrate import bank_calibrate

    bank = tmp_path / "bank"
    shutil.copytree(demo / "bank", bank)
    data = demo / "run" / "synthetic-data"  # every training image is an anchor
    anchors = json.loads((bank / "anchors.json").read_text())
    fit = bank_calibrate(bank, data=data, progress=False)
    assert fit["left_out"]["anchors"] == len(anchors)  # the other images are fitted on
    assert fit["images"] == sum(1 for _ in data.rglob("*.jpg")) - len(anchors)
