"""Outputs never clobber what is not theirs: run folders, banks, evaluation folders and input
images are refused unless --force says replacing is wanted; one trainer per run folder; class
labels that would be confused with an abstention or a path are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, set_args
from PIL import Image
from test_bank import make_run

from siamese_marrow import cli as cli_module
from siamese_marrow.data.datasets import load_samples
from siamese_marrow.engine.banks import bank_build
from siamese_marrow.errors import ConfigError, DataError

TRAIN = [
    *TINY_MODEL,
    "sampler.p_classes=2",
    "sampler.k_per_class=2",
    "sampler.batches_per_epoch=1",
    "train.epochs=1",
    "train.threads=1",
    "data.check_images=false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c in ("AAA", "BBB"):
        (root / c).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def extra(tmp_path_factory) -> Path:
    """Images that are in no bank yet."""
    root = tmp_path_factory.mktemp("extra")
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(root / f"new_{i}.png")
    return root


@pytest.fixture(autouse=True)
def _capture(capsys: pytest.CaptureFixture[str]) -> None:
    global CAPSYS
    CAPSYS = capsys


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (faster than a subprocess): exit code and output."""
    CAPSYS.readouterr()
    code = cli_module.main(list(args))
    out, err = CAPSYS.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def train(out: Path, data: Path, *more: str) -> subprocess.CompletedProcess:
    args = set_args([*TRAIN, f"data.root={data}"])
    return cli("train", "--quiet", "--out", str(out), *args, *more)


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [x for x in result.stderr.strip().splitlines() if "it/s]" not in x]  # no progress
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def test_train_refuses_a_folder_of_other_files_unless_forced(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own notes\n")
    (out / "metrics.jsonl").write_text('{"mine": 1}\n')
    one_line_error(train(out, data), "is not empty", "--force")
    assert (out / "config.yaml").read_text() == "my own notes\n"  # untouched
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.jsonl"]
    result = train(out, data, "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records] == [1]  # a fresh log, not appended to the old one


def test_train_refuses_a_trained_run_and_force_starts_over(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, data).returncode == 0
    first = json.loads((out / "last.json").read_text())
    one_line_error(train(out, data), "already holds a run", "--resume")
    assert json.loads((out / "last.json").read_text()) == first
    assert train(out, data, "--force").returncode == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the old run's log was cleared, not continued


HOLDER = textwrap.dedent(
    """
    import sys
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_a_second_trainer_of_one_folder_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(train(out, data), "another process is training into")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert train(out, data).returncode == 0  # free again once the other process has ended


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def build_argv(run: Path, data: Path, bank: Path) -> tuple[str, ...]:
    """The command line of ``bank build`` from ``run``'s model over ``data`` into ``bank``."""
    return ("bank", "build", "--run", str(run), "--data", str(data), "--out", str(bank))


def test_bank_build_refuses_to_replace_a_bank_unless_forced(
    run_dir: Path, data: Path, extra: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "bank"
    build = build_argv(run_dir, data, bank)
    assert cli(*build, "--quiet").returncode == 0
    assert cli("bank", "add", "--bank", str(bank), "--label", "NEW", str(extra)).returncode == 0
    one_line_error(cli(*build, "--quiet"), "already holds an anchor bank", "--force")
    assert json.loads((bank / "manifest.json").read_text())["classes"]["NEW"] == 3  # kept
    assert cli(*build, "--quiet", "--force").returncode == 0
    assert "NEW" not in json.loads((bank / "manifest.json").read_text())["classes"]


def test_bank_build_checks_its_overrides_as_config_keys(
    run_dir: Path, data: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "bank"
    build = build_argv(run_dir, data, bank)
    assert cli(*build, "--quiet").returncode == 0
    before = (bank / "manifest.json").read_bytes()
    # a Python caller has no argparse choices: the override is checked as bank.adapt_on would be
    with pytest.raises(ConfigError, match="bank.adapt_on: 'sideways' is not one of mean, views"):
        bank_build(run_dir, data, bank, progress=False, force=True, adapt_on="sideways")
    assert (bank / "manifest.json").read_bytes() == before  # the bank there is kept
    one_line_error(
        cli(*build, "--quiet", "--force", "--prototypes-per-class", "0"),
        "bank.prototypes_per_class=0 must be >= 1",
    )
    assert (bank / "manifest.json").read_bytes() == before
    done = cli(*build, "--quiet", "--force", "--prototypes-per-class", "3")
    assert done.returncode == 0 and json.loads(done.stdout)["prototypes_per_class"] == 3
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["bank_config"]["prototypes_per_class"] == 3


def test_outputs_never_overwrite_an_input_or_anchor(
    run_dir: Path, data: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "bank"
    build = build_argv(run_dir, data, bank)
    assert cli(*build, "--quiet").returncode == 0
    query = data / "AAA" / "AAA_0.png"
    anchor = data / "BBB" / "BBB_1.png"
    before = {p: p.read_bytes() for p in (query, anchor)}
    one_line_error(
        cli("classify", "--bank", str(bank), str(query), "-o", str(query)), "input images"
    )
    one_line_error(
        cli("search", "--bank", str(bank), str(query), "--gallery", str(anchor)), "input images"
    )
    link = tmp_path / "link.png"
    link.symlink_to(query)
    one_line_error(cli("classify", "--bank", str(bank), str(query), "-o", str(link)), "input")
    assert {p: p.read_bytes() for p in (query, anchor)} == before
    assert (
        cli(
            "classify", "--bank", str(bank), str(query), "-o", str(tmp_path / "out.jsonl")
        ).returncode
        == 0
    )


def test_evaluate_refuses_a_folder_of_other_files(
    run_dir: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    one_line_error(
        cli("evaluate", "--run", str(run_dir), "--data", str(data), "--out", str(out)),
        "is not empty",
    )
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("uncertain", "reserved"),
        ("UNCERTAIN", "reserved"),
        ("   ", "whitespace"),
        (" ABE", "whitespace"),
        ("A\nB", "control character"),
        ("A/B", "path separator"),
        ("..", "path separator"),
        ("X" * 101, "characters long"),
    ],
)
def test_bank_add_refuses_labels_that_cannot_name_a_class(
    run_dir: Path, data: Path, tmp_path: Path, label: str, why: str
) -> None:
    from siamese_marrow.index import AnchorBank, BankError
    from siamese_marrow.models.checkpoint import load_run

    bank = AnchorBank(load_run(run_dir))
    with pytest.raises(BankError, match=why):
        bank.add([str(data / "AAA" / "AAA_0.png")], label)
    assert len(bank) == 0


def test_bank_add_command_refuses_a_reserved_label(
    run_dir: Path, data: Path, extra: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "bank"
    build = build_argv(run_dir, data, bank)
    assert cli(*build, "--quiet").returncode == 0
    one_line_error(
        cli("bank", "add", "--bank", str(bank), "--label", "uncertain", str(extra)),
        "reserved",
    )


def test_data_with_a_label_that_cannot_name_a_class_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "m.csv").write_text(f'path,label\n{img},uncertain\n{img},"A\nB"\n')
    with pytest.raises(DataError, match="2 class label"):
        load_samples(tmp_path / "m.csv")
