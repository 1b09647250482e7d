"""Data-parallel training and sharded embedding on 2 gloo processes on the CPU (issue 12).

The ranks are forked from the test process with the environment torchrun gives them (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), one torch thread each; one test launches the
real ``torchrun``. Oracles: one process stepping on the union of the two ranks' batches, an
uninterrupted 2-process run, a 1-process bank build.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_MODEL
from safetensors.torch import load_file

from siamese_marrow import cli
from siamese_marrow.config import load_config
from siamese_marrow.data.datasets import CellDataset, collate_images
from siamese_marrow.data.sampler import PKBatchSampler
from siamese_marrow.data.synth import write_dataset
from siamese_marrow.engine import train as train_mod
from siamese_marrow.engine.banks import bank_build
from siamese_marrow.models.checkpoint import load_train_state

TINY = [
    *TINY_MODEL,
    "model.embed_dim=16",
    "model.head_hidden=16",
    "sampler.p_classes=3",
    "sampler.k_per_class=2",
    "train.warmup_steps=2",
    "train.eval_batch_size=4",
    "train.threads=1",
    "data.val_fraction=0.25",
    "scale.timeout_s=60",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, {"BLA": 6, "EOS": 6, "LYT": 6, "NGS": 1}, seed=0, size=32)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    """A forked rank: torchrun's environment, one thread, stderr to a file; never returns."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    code = 1
    try:
        code = fn(rank, *args) or 0
    except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)  # no pytest teardown in the child


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2) -> list[int]:
    """``fn(rank, *args)`` in ``world`` forked processes that form one job; their exit codes."""
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_as_rank, args=(r, world, port, fn, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def _cli_rank(rank: int, argv: list[str], log: str, kill_at_step: int | None = None) -> int:
    """``siamese-marrow ARGV`` as one rank (stderr to ``log.<rank>``); rank 1 SIGKILLs itself as
    its step ``kill_at_step`` begins, and every rank records the loss of each of its steps."""
    fd = os.open(f"{log}.{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(fd, "w", buffering=1)  # pytest replaced sys.stderr
    real = train_mod._step

    def step(job, x, y, epoch):  # noqa: ANN001, ANN202
        if rank == 1 and job.state.step == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        parts = real(job, x, y, epoch)
        with open(f"{log}.loss.{rank}", "a") as f:
            f.write(json.dumps(parts) + "\n")
        torch.save(_grads(job), f"{log}.grads.{rank}")  # this step's (averaged) gradients
        return parts

    train_mod._step = step
    return cli.main(argv)


def _grads(job: Any) -> dict[str, torch.Tensor]:
    """The gradients of the last step, of the model's and the loss's parameters."""
    named = list(job.model.named_parameters())
    if job.proxy_loss is not None:
        named += [(f"loss.{n}", p) for n, p in job.proxy_loss.named_parameters()]
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def _set_args(items: list[str]) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


def _one_process_on_the_union(cfg: Any, out: Path) -> dict[str, Any]:
    """One process, one step of the trainer on the union of the first batches that ranks 0 and
    1 of a 2-process job draw: the loss, the weights before and after, the updated proxies."""
    with ExitStack() as stack:
        job = train_mod._set_up(cfg, out, False, False, False, stack)
        before = {k: v.detach().clone() for k, v in job.model.state_dict().items()}
        labels = CellDataset(job.data.train, job.data.classes).get_labels()
        batches = [
            next(iter(PKBatchSampler.from_config(labels, cfg.sampler, cfg.train.seed, None, r, 2)))
            for r in (0, 1)
        ]
        x, y = collate_images([job.loader_ds[item] for b in batches for item in b])
        job.model.train()
        parts = train_mod._step(job, x, y, 0)
        proxies = None if job.proxy_loss is None else job.proxy_loss.proxies.detach().clone()
        weights = {k: v.detach().clone() for k, v in job.model.state_dict().items()}
        grads = _grads(job)
    return {
        "loss": parts["loss"],
        "grads": grads,
        "before": before,
        "weights": weights,
        "proxies": proxies,
    }


@pytest.mark.parametrize(
    "case",
    [
        # GroupNorm: no batch statistics, every weight trains, with the proxy loss
        ["model.backbone=test_efficientnet_gn", "train.proxy_weight=0.5"],
        # BatchNorm in eval mode (a frozen backbone): the projection and heads train
        ["model.backbone=test_efficientnet", "train.freeze=all"],
    ],
    ids=["groupnorm+proxy", "batchnorm-eval"],
)
def test_one_step_on_two_ranks_equals_one_process_on_the_union_batch(
    tiny_data: Path, tmp_path: Path, case: list[str]
) -> None:
    over = [
        *TINY,
        *case,
        f"data.root={tiny_data}",
        "sampler.batches_per_epoch=2",  # one step: one batch per rank
        "train.epochs=1",
    ]
    run = tmp_path / "two"
    argv = ["train", "--out", str(run), "--quiet", *_set_args(over)]
    assert run_ranks(_cli_rank, argv, str(tmp_path / "log")) == [0, 0]
    ref = _one_process_on_the_union(load_config(None, over), tmp_path / "one")

    losses = [json.loads((tmp_path / f"log.loss.{r}").read_text())["loss"] for r in (0, 1)]
    assert losses[0] == losses[1]  # every rank scores the same global batch
    assert abs(losses[0] - ref["loss"]) <= 1e-5, (losses, ref["loss"])
    grads = [torch.load(tmp_path / f"log.grads.{r}") for r in (0, 1)]
    assert grads[0].keys() == grads[1].keys() == ref["grads"].keys()
    if ref["proxies"] is not None:
        assert "loss.proxies" in grads[0]
    grad_diff = max(float((g[k] - ref["grads"][k]).abs().max()) for g in grads for k in g)
    assert grad_diff <= 1e-5, grad_diff
    weights = load_file(str(run / "last.safetensors"))
    assert weights.keys() == ref["weights"].keys()
    diff = {k: float((weights[k] - ref["weights"][k]).abs().max()) for k in weights}
    assert max(diff.values()) <= 1e-5, max(diff.items(), key=lambda kv: kv[1])
    moved = max(float((ref["weights"][k] - ref["before"][k]).abs().max()) for k in weights)
    assert moved > 1e-4  # the step did change the weights
    if ref["proxies"] is not None:  # the proxies live outside the model: averaged over the ranks
        _, saved = load_train_state(run, "last")
        assert float((saved["proxy_loss"]["proxies"] - ref["proxies"]).abs().max()) <= 1e-5
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"], summary["steps_per_epoch"]) == (2, 1, 1)
    print(
        f"1 vs 2 processes: loss {abs(losses[0] - ref['loss']):.2e}, gradients {grad_diff:.2e}, "
        f"weights {max(diff.values()):.2e}"
    )


def assert_same_run(straight: Path, resumed: Path, names: tuple[str, ...]) -> None:
    """The checkpoints ``names`` of two runs hold the same weights (to 1e-6), and their
    validation records agree epoch by epoch."""
    for name in names:
        a = load_file(str(straight / f"{name}.safetensors"))
        b = load_file(str(resumed / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)
    logs = [(r / "metrics.jsonl").read_text().splitlines() for r in (straight, resumed)]
    assert [json.loads(x)["val_balanced_accuracy"] for x in logs[0]] == [
        json.loads(x)["val_balanced_accuracy"] for x in logs[1]
    ]


RESUMABLE = [
    *TINY,
    "sampler.batches_per_epoch=6",  # 3 steps per rank and epoch
    "train.epochs=2",
    "train.checkpoint_every=2",
]


@pytest.fixture(scope="module")
def two_rank_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run (2 epochs of 3 steps), trained through the CLI."""
    out = tmp_path_factory.mktemp("two_rank") / "run"
    argv = [
        "train",
        "--out",
        str(out),
        "--quiet",
        *_set_args([*RESUMABLE, f"data.root={tiny_data}"]),
    ]
    assert run_ranks(_cli_rank, argv, str(out.parent / "log")) == [0, 0]
    return out


def test_killed_two_process_run_ends_clearly_and_resumes_to_the_same_weights(
    tiny_data: Path, two_rank_run: Path, tmp_path: Path
) -> None:
    run, log = tmp_path / "run", str(tmp_path / "log")
    argv = [
        "train",
        "--out",
        str(run),
        "--quiet",
        *_set_args([*RESUMABLE, f"data.root={tiny_data}"]),
    ]
    # rank 1 dies as step 5 begins (mid epoch 2, after the step-4 checkpoint): rank 0 waits in
    # the step's all-gather, hears that its peer is gone, and ends with one clear line
    assert run_ranks(_cli_rank, argv, log, 4) == [2, -signal.SIGKILL]
    said = Path(f"{log}.0").read_text().strip().splitlines()
    assert len(said) == 1 and said[0].startswith("siamese-marrow train: error: rank 0 of 2 lost"), (
        said
    )
    assert f"--resume {run}" in said[0]
    assert json.loads((run / "last.json").read_text())["step"] == 4

    assert run_ranks(_cli_rank, ["train", "--resume", str(run), "--quiet"], log) == [0, 0]
    assert_same_run(two_rank_run, run, ("last",))
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_killed_two_process_run_under_a_weight_average_resumes_to_the_same_average(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``train.ema_decay`` under 2 ranks: the average in ``last`` and the raw weights kept
    beside it come out of a kill and a resume as they come out of the run that went straight
    on, and the average is not the raw weights."""
    over = [*RESUMABLE, f"data.root={tiny_data}", "train.ema_decay=0.5"]
    straight, run, log = tmp_path / "straight", tmp_path / "run", str(tmp_path / "log")
    argv = ["train", "--quiet", *_set_args(over)]
    assert run_ranks(_cli_rank, [*argv, "--out", str(straight)], log) == [0, 0]
    assert run_ranks(_cli_rank, [*argv, "--out", str(run)], log, 4) == [2, -signal.SIGKILL]
    assert json.loads((run / "last.json").read_text())["step"] == 4
    assert run_ranks(_cli_rank, ["train", "--resume", str(run), "--quiet"], log) == [0, 0]

    assert_same_run(straight, run, ("last", "best"))
    average, state_straight = load_train_state(straight, "last")
    _, state_run = load_train_state(run, "last")
    raw = state_straight["raw_weights"]
    for k in raw:
        assert torch.allclose(raw[k], state_run["raw_weights"][k], atol=1e-6), k
    moved = max(float((average[k] - raw[k]).abs().max()) for k in raw if raw[k].is_floating_point())
    assert moved > 1e-4, moved  # 6 steps at decay 0.5: the average lags the weights


def test_a_resume_needs_as_many_processes(
    two_rank_run: Path, capsys: pytest.CaptureFixture
) -> None:
    before = (two_rank_run / "metrics.jsonl").read_text()
    assert cli.main(["train", "--resume", str(two_rank_run), "--quiet"]) == 2  # one process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained by 2 process(es) and this job has 1" in err[0], err
    assert "resume it with 2 processes in all" in err[0]
    assert (two_rank_run / "metrics.jsonl").read_text() == before


@pytest.fixture(scope="module")
def one_process_bank(tiny_data: Path, two_rank_run: Path) -> Path:
    out = two_rank_run.parent / "bank-one"
    bank_build(two_rank_run, tiny_data, out, progress=False)
    return out


def test_sharded_bank_build_under_torchrun_writes_what_one_process_writes(
    tiny_data: Path, two_rank_run: Path, one_process_bank: Path, tmp_path: Path
) -> None:
    two = tmp_path / "bank-two"
    argv = ["bank", "build", "--run", str(two_rank_run), "--data", str(tiny_data)]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        # "--": torchrun's own --run-path would otherwise claim --run
        + ["-m", "siamese_marrow.cli", "--", *argv, "--out", str(two), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["anchors"] == 19  # printed once, by rank 0
    one = one_process_bank
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    assert (one / "anchors.json").read_text() == (two / "anchors.json").read_text()
    e1, e2 = np.load(one / "embeddings.npy"), np.load(two / "embeddings.npy")
    assert e1.shape == e2.shape == (19, 16)
    assert np.abs(e1 - e2).max() <= 1e-5
    m1, m2 = (json.loads((b / "manifest.json").read_text()) for b in (one, two))
    m1.pop("files"), m2.pop("files")  # sha256 of the embeddings: equal up to float rounding
    assert m1 == m2
    print(f"bank 1 vs 2 processes: embeddings {np.abs(e1 - e2).max():.2e}")


def _commands_rank(rank: int, commands: list[list[str]], log: str) -> int:
    """Several commands as one rank of a job whose process group already exists."""
    import torch.distributed as dist

    fd = os.open(f"{log}.{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(fd, "w", buffering=1)
    dist.init_process_group("gloo")
    try:
        for argv in commands:
            if code := cli.main(argv):
                return code
    finally:
        dist.destroy_process_group()
    return 0


def test_sharded_classify_and_evaluate_write_what_one_process_writes(
    tiny_data: Path, two_rank_run: Path, one_process_bank: Path, tmp_path: Path
) -> None:
    images = [str(tiny_data / c) for c in ("BLA", "EOS", "NGS")]

    def commands(tag: str) -> list[list[str]]:
        return [
            [
                "classify",
                "--bank",
                str(one_process_bank),
                *images,
                "-o",
                str(tmp_path / f"{tag}.jsonl"),
            ],
            [
                "evaluate",
                "--run",
                str(two_rank_run),
                "--out",
                str(tmp_path / f"eval-{tag}"),
                "--quiet",
            ],
        ]

    for argv in commands("one"):
        assert cli.main(argv) == 0
    assert run_ranks(_commands_rank, commands("two"), str(tmp_path / "log")) == [0, 0]

    one, two = ((tmp_path / f"{t}.jsonl").read_text().splitlines() for t in ("one", "two"))
    assert len(one) == len(two) == 13
    for a, b in zip(map(json.loads, one), map(json.loads, two), strict=True):
        assert (a["path"], a["prediction"]) == (b["path"], b["prediction"])
        assert [x["path"] for x in a["anchors"]] == [x["path"] for x in b["anchors"]]
        for c, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][c]) <= 1e-5
    m1, m2 = (
        json.loads((tmp_path / f"eval-{t}" / "metrics.json").read_text()) for t in ("one", "two")
    )
    assert m1.keys() == m2.keys()
    for k in ("n", "accuracy", "balanced_accuracy", "confusion_matrix", "abstained"):
        assert m1[k] == m2[k], k
    assert abs(m1["ece"] - m2["ece"]) <= 1e-5
    assert sorted(os.listdir(tmp_path / "eval-one")) == sorted(os.listdir(tmp_path / "eval-two"))
    p1, p2 = (
        json.loads((tmp_path / f"eval-{t}" / "predictions.json").read_text())
        for t in ("one", "two")
    )
    assert [r["prediction"] for r in p1] == [r["prediction"] for r in p2]
    assert Path(f"{tmp_path / 'log'}.1").read_text() == ""  # rank 1 printed nothing


def test_an_image_that_fails_on_one_rank_stops_every_rank_with_its_message(
    tiny_data: Path, two_rank_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for c in ("BLA", "EOS"):
        (data / c).mkdir(parents=True)
        for p in sorted((tiny_data / c).glob("*.jpg")):
            (data / c / p.name).write_bytes(p.read_bytes())
    (data / "EOS" / "zz_broken.jpg").write_bytes(b"not a jpeg")  # the last image: rank 1's share
    argv = ["bank", "build", "--run", str(two_rank_run), "--data", str(data)]
    argv += ["--out", str(tmp_path / "bank"), "--quiet"]
    log = str(tmp_path / "log")
    assert run_ranks(_commands_rank, [argv], log) == [2, 2]
    said = Path(f"{log}.0").read_text().strip().splitlines()
    assert len(said) == 1 and "error: rank 1 of 2: " in said[0] and "zz_broken.jpg" in said[0]
    assert Path(f"{log}.1").read_text() == ""  # rank 0 said it for both
    assert not (tmp_path / "bank").exists()


def test_sync_bn_on_cpu_ranks_is_refused_before_any_file_is_written(
    tiny_data: Path, tmp_path: Path
) -> None:
    run, log = tmp_path / "run", str(tmp_path / "log")
    over = [*TINY, f"data.root={tiny_data}", "scale.sync_bn=true"]
    argv = ["train", "--out", str(run), "--quiet", *_set_args(over)]
    assert run_ranks(_cli_rank, argv, log) == [2, 2]
    said = Path(f"{log}.0").read_text().strip().splitlines()
    assert len(said) == 1 and "scale.sync_bn=true needs CUDA" in said[0], said
    assert Path(f"{log}.1").read_text() == ""
    assert not run.exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_commands_that_do_not_share_their_work_are_refused_under_torchrun(
    rank: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--per-class", "1"]) == 2
    err = capsys.readouterr().err
    if rank:
        assert err == ""
    else:
        assert err.startswith("siamese-marrow synth: error: siamese-marrow synth runs in one")
        assert "train, bank build, evaluate, classify" in err
    assert not (tmp_path / "s").exists()


def test_a_leading_double_dash_is_dropped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``torchrun ... -m siamese_marrow.cli -- bank info ...``: the command after ``--``."""
    assert cli.main(["--", "bank", "info", "--bank", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("siamese-marrow bank info: error: ")
