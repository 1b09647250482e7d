"""Bad images and bad structure: a clear message naming the file, a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, cli, set_args
from PIL import Image

from siamese_marrow import cli as cli_module
from siamese_marrow import utils
from siamese_marrow.data.check import find_bad_images
from siamese_marrow.data.datasets import load_samples
from siamese_marrow.data.io import load_rgb
from siamese_marrow.data.synth import write_dataset
from siamese_marrow.errors import ImageDecodeError
from siamese_marrow.utils import check_writable, describe_os_error, naming


def _jpeg_bytes(size: int = 32) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each kind of bad image; return name -> expected words in the error."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "document.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png")  # 400 Mpx in a few kB
    Image.new("1", (9_000, 8_000)).save(folder / "huge.png")  # 72 Mpx, above our limit
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "document.png": "not an image",
        "bomb.png": "decompression bomb",
        "huge.png": "above the limit",
    }


def test_each_bad_kind_gets_its_own_clear_error(tmp_path: Path) -> None:
    expected = make_bad_files(tmp_path)
    for name, words in expected.items():
        with pytest.raises(ImageDecodeError) as info:
            load_rgb(tmp_path / name)
        assert name in str(info.value) and words in str(info.value), str(info.value)


def test_16bit_and_cmyk_are_good_images(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "a16.png")
    Image.new("CMYK", (8, 8), (10, 200, 30, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("a16.png", "cmyk.jpg"):
        assert load_rgb(tmp_path / name).mode == "RGB"


@pytest.fixture
def dirty_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, {"BLA": 6, "EOS": 6, "LYT": 6}, seed=0, size=32)
    make_bad_files(root / "EOS")
    return root


def test_check_data_lists_every_bad_file(dirty_data: Path, tmp_path: Path) -> None:
    bad = find_bad_images(load_samples(dirty_data))
    assert len(bad) == 6
    r = cli("check-data", str(dirty_data), "--quiet", "--json", str(tmp_path / "c.json"))
    assert r.returncode == 1
    for name in make_bad_files(tmp_path / "again"):
        assert name in r.stderr
    assert "Traceback" not in r.stderr
    assert len(json.loads((tmp_path / "c.json").read_text())["bad"]) == 6


TINY = set_args(
    [
        *TINY_MODEL,
        "sampler.p_classes=3",
        "sampler.k_per_class=2",
        "sampler.batches_per_epoch=2",
        "train.epochs=1",
        "data.val_fraction=0.3",
    ]
)


def test_train_stops_before_work_and_skip_bad_lists_them(dirty_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = cli("train", "--out", str(run), "--quiet", "--set", f"data.root={dirty_data}", *TINY)
    assert r.returncode == 2, r.stderr
    assert "6 of 24 images cannot be used" in r.stderr and "truncated.jpg" in r.stderr
    assert "--skip-bad" in r.stderr and "Traceback" not in r.stderr
    assert not (run / "last.json").exists()

    r = cli(
        "train",
        "--out",
        str(run),
        "--quiet",
        "--skip-bad",
        "--set",
        f"data.root={dirty_data}",
        *TINY,
    )
    assert r.returncode == 0, r.stderr
    skipped = json.loads((run / "skipped_images.json").read_text())
    assert len(skipped) == 6 and all(s["problem"] for s in skipped)
    assert json.loads(r.stdout)["skipped_images"] == 6


@pytest.mark.parametrize(
    "args,words",
    [
        (["--set", "train.epochs=many"], "train.epochs: expected an integer"),
        (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["--set", "sampler.p_classes=9"], "p_classes=9 but the training data has only 3"),
    ],
)
def test_bad_config_is_one_clear_line(
    dirty_data: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    r = cli(
        "train",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--skip-bad",
        "--set",
        f"data.root={dirty_data}",
        *TINY,
        *args,
    )
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_missing_data_folder_and_empty_class(tmp_path: Path) -> None:
    r = cli("check-data", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "d" / "BLA").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "BLA" / "a.png")
    (tmp_path / "d" / "EOS").mkdir()
    r = cli("check-data", str(tmp_path / "d"))
    assert r.returncode == 2 and "EOS" in r.stderr and "hold no images" in r.stderr


@pytest.mark.parametrize(
    "override,words",
    [
        ("bank.index=Bogus", "could not parse index string Bogus"),
        ("model.backbone=resnet_nope", "is not a timm model"),
    ],
)
def test_refused_before_any_file_is_written(
    dirty_data: Path, tmp_path: Path, override: str, words: str
) -> None:
    run = tmp_path / "run"
    r = cli(
        "train",
        "--out",
        str(run),
        "--quiet",
        "--skip-bad",
        *set_args([f"data.root={dirty_data}", *TINY_MODEL, override]),
    )
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (
            ["search", "--bank", "B", "q.png", "-k", "0"],
            "argument -k: 0 is out of range: must be >= 1",
        ),
        (["classify", "--bank", "B", "q.png", "--workers", "-1"], "argument --workers: -1 is out"),
        (
            ["bank", "build", "--run", "R", "--data", "D", "--out", "O", "--workers", "-1"],
            "-1 is out",
        ),
        (["bank", "add", "--bank", "B", "--label", "X", "q.png", "--workers", "-2"], "-2 is out"),
        (["check-data", "D", "--workers", "-1"], "argument --workers: -1 is out"),
        (["classify", "--bank", "B", "q.png", "--abstain-below", "1.5"], "1.5 is out of range"),
        (["classify", "--bank", "B", "q.png", "--abstain-below", "-0.1"], "must be in [0, 1]"),
        (
            ["classify", "--bank", "B", "q.png", "--abstain-below", "inf"],
            "expected a finite number",
        ),
        (["classify", "--bank", "B", "q.png", "--abstain-below", "nan"], "got 'nan'"),
        (["classify", "--bank", "B", "q.png", "--top-m", "-5"], "--top-m: -5 is out of range"),
        (["classify", "--bank", "B", "q.png", "--top-m", "0"], "--top-m: 0 is out of range"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--k-shot", ",,,"], "got ',,,'"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--k-shot", "1,,5"], "got '1,,5'"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--k-shot", "1,0"], "0 is out of range"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--k-shot", "1,x"], "expected an integer"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--n-way", "1"], "--n-way: 1 is out"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--episodes", "0"], "--episodes: 0 is out"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--n-query", "-1"], "--n-query: -1 is out"),
        (["fewshot-eval", "--run", "R", "--data", "D", "--seed", "-1"], "--seed: -1 is out"),
        (["synth", "--out", "O", "--per-class", "0"], "--per-class: 0 is out of range"),
        (["synth", "--out", "O", "--total", "-3"], "--total: -3 is out of range"),
        (
            ["synth", "--out", "O", "--size", "5"],
            "--size: 5 is out of range: must be in [16, 4096]",
        ),
        (["synth", "--out", "O", "--seed", "x" * 1000], "(1,000 characters in all)"),
    ],
)
def test_numeric_options_are_range_checked(args: list[str], words: str) -> None:
    r = cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("siamese-marrow ") and words in last, r.stderr
    assert len(last) < 400


# --- failed writes: one line naming the path, checked before the work (issue 9, item 8) ---


def test_check_writable_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    with pytest.raises(OSError) as info:
        check_writable(regular / "out" / "bank")
    assert info.value.errno == errno.ENOTDIR and info.value.filename == str(
        regular / "out" / "bank"
    )
    check_writable(tmp_path / "new" / "deeper")  # made later under a writable existing parent
    check_writable(tmp_path)
    assert not list(tmp_path.rglob(".write-probe*")) and not (tmp_path / "new").exists()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".write-probe.x"))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(OSError) as info:
            check_writable(tmp_path / "bank", beside=True)
    line = describe_os_error(info.value)
    assert line.startswith(f"{tmp_path / 'bank'}: Read-only file system") and "\n" not in line

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        check_writable(tmp_path / "r.json")
    assert info.value.errno == errno.ENOSPC
    assert describe_os_error(info.value).startswith(f"{tmp_path / 'r.json'}: No space left")
    assert not list(tmp_path.glob(".write-probe*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_check_writable_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(OSError) as info:
        check_writable(ro / "out.csv")
    assert info.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "{F}/run", "--quiet", "--set", "data.root=nowhere"],
        ["bank", "build", "--run", "nowhere", "--data", "nowhere", "--out", "{F}/bank"],
        ["bank", "add", "--bank", "{F}/bank", "--label", "NEW", "q.png"],
        ["classify", "--bank", "nowhere", "q.png", "--format", "csv", "-o", "{F}/out.csv"],
        ["classify", "--bank", "nowhere", "q.png", "--html", "{F}/review.html"],
        ["bank", "calibrate", "--bank", "{F}/bank"],
        ["search", "--bank", "nowhere", "q.png", "--gallery", "{F}/g.png"],
        ["evaluate", "--run", "nowhere", "--out", "{F}/eval"],
        ["evaluate", "--run", "{F}/run"],
        ["synth", "--out", "{F}/synth", "--per-class", "1"],
        ["retrieval-eval", "--bank", "nowhere", "--data", "nowhere", "--json", "{F}/r.json"],
        ["fewshot-eval", "--run", "nowhere", "--data", "nowhere", "--json", "{F}/f.json"],
    ],
)
def test_unwritable_output_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str]
) -> None:
    """The output lies under a regular file: refused first, although the inputs do not exist."""
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    argv = [a.replace("{F}", str(regular)) for a in args]
    assert cli_module.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{regular} is not a folder" in err and "error: " + str(regular) in err, err


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, {"BLA": 2, "EOS": 2}, seed=0, size=32)
    return root


def test_failed_write_after_the_check_is_one_line(
    tiny_images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the check cannot foresee (the disk fills during the work) still ends in one line."""
    monkeypatch.setattr(utils, "check_writable", lambda *a, **k: None)
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    argv = ["check-data", str(tiny_images), "--quiet", "--json", str(regular / "c.json")]
    assert cli_module.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"siamese-marrow check-data: error: {regular}: File exists", err

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "c.json"
    assert cli_module.main(["check-data", str(tiny_images), "--quiet", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"siamese-marrow check-data: error: {out}: No space left on device; "
        "free some space or choose another folder"
    )
    assert not out.exists() and not list(tmp_path.glob(".c.json*"))


def test_naming_gives_an_anonymous_os_error_its_path(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, naming(tmp_path / "anchors.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(tmp_path / "anchors.json")


@pytest.fixture(scope="module")
def latin1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run trained on data whose third class folder is named b"LY\\xff" (not UTF-8)."""
    from siamese_marrow.config import load_config
    from siamese_marrow.engine.train import train

    base = tmp_path_factory.mktemp("latin1")
    data = base / "data"
    write_dataset(data, {"BLA": 6, "EOS": 6, "LYT": 6}, seed=0, size=32)
    try:
        os.rename(os.fsencode(data / "LYT"), os.fsencode(data) + b"/LY\xff")
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    overrides = [
        *TINY_MODEL,
        "sampler.p_classes=3",
        "sampler.k_per_class=2",
        "sampler.batches_per_epoch=2",
        "train.epochs=1",
        "data.val_fraction=0.3",
        "data.test_fraction=0.2",
        f"data.root={data}",
    ]
    train(load_config(None, overrides), base / "run", progress=False)
    return base / "run", data


def test_non_utf8_class_and_file_names(
    latin1_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, data = latin1_run
    out = tmp_path / "eval"
    assert cli_module.main(["evaluate", "--run", str(run), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "LY\udcff" in metrics["classes"]
    html = (out / "report.html").read_text(encoding="utf-8")  # valid UTF-8
    assert "LY\\xff" in html
    assert all((out / f).stat().st_size > 0 for f in ("confusion.png", "recall.png"))

    bank = tmp_path / "bank"
    assert cli_module.main(["bank", "build", "--run", str(run), "--data", str(data),
                            "--out", str(bank), "--quiet"]) == 0  # fmt: skip
    query = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    with open(query, "wb") as f:
        f.write((data / "BLA" / sorted(os.listdir(data / "BLA"))[0]).read_bytes())
    csv_out = tmp_path / "out.csv"
    argv = ["classify", "--bank", str(bank), os.fsdecode(query), "--format", "csv"]
    capsys.readouterr()
    assert cli_module.main([*argv, "-o", str(csv_out)]) == 0
    raw = csv_out.read_bytes()
    assert raw.startswith(b"path,prediction,p_BLA,p_EOS,p_LY\xff,")  # the names' own bytes
    assert query + b"," in raw
    assert "Traceback" not in capsys.readouterr().err


def test_alias_bomb_and_long_set_value_give_short_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bomb = tmp_path / "bomb.yaml"
    text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    bomb.write_text(text + "data:\n  root: [*i, *i, *i, *i, *i, *i, *i, *i, *i]\n")
    assert len(text) < 600  # 9**10 values once expanded
    run = tmp_path / "run"
    for args in (
        ["--config", str(bomb)],
        [
            "--set",
            "data.root=[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a]]",
        ],
        ["--set", "model.backbone=" + "[" * 300, "--set", "model.pretrained=none"],
        ["--set", "train.epochs=" + "7x" * 300],
    ):
        assert cli_module.main(["train", "--out", str(run), "--quiet", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("siamese-marrow train: error: ") and len(err) < 500, err
        assert "Traceback" not in err
    assert not run.exists()
