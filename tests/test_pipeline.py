"""End to end through the command line: demo (synth -> train -> bank -> classify -> few-shot ->
evaluate -> report), then the commands scripts rely on, with their documented output shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_MODEL, cli, set_args
from PIL import Image


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    r = cli(
        "demo",
        "--config",
        "configs/demo.yaml",
        "--out",
        str(out),
        "--quick",
        "--set",
        "train.threads=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Open the report" in r.stdout
    return out


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
    for png in ("confusion.png", "recall.png", "curves.png", "mistakes_gallery.png"):
        data = (demo / "eval" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
    assert summary["fewshot"]["shots"] == 5


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
