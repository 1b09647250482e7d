"""Interrupted work and untrusted files (issue 6): SIGKILL of a real ``siamese-marrow train`` and
of bank saves at random moments, NaN losses and weights, and checkpoints and banks that were
tampered with or carry a pickle that would run code."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, set_args
from safetensors.torch import load_file, save_file

from siamese_marrow import cli
from siamese_marrow.config import load_config
from siamese_marrow.data.synth import write_dataset
from siamese_marrow.engine import train as train_mod
from siamese_marrow.engine.train import train
from siamese_marrow.index.bank import AnchorBank, BankError
from siamese_marrow.models.checkpoint import CheckpointError, load_run, load_train_state

TINY = [
    *TINY_MODEL,
    "sampler.p_classes=3",
    "sampler.k_per_class=2",
    "sampler.batches_per_epoch=4",
    "train.epochs=3",
    "train.checkpoint_every=1",
    "train.threads=1",
    "data.num_workers=0",
]
STEPS = 3 * 4  # epochs x batches_per_epoch
CLASSES = ("BLA", "EOS", "LYT")

#: ``python -m siamese_marrow.cli ARGS``, plus an observer that appends one line to
#: $SM_STEP_LOG after every optimizer step (an O_APPEND write survives SIGKILL), so the test
#: knows how many steps the killed process had done and can count the steps a kill lost.
CLI_WITH_STEP_LOG = (
    "import os, runpy\n"
    "from torch.optim.optimizer import register_optimizer_step_post_hook\n"
    "fd = os.open(os.environ['SM_STEP_LOG'], os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
    "register_optimizer_step_post_hook(lambda *a: os.write(fd, b's\\n'))\n"
    "runpy.run_module('siamese_marrow.cli', run_name='__main__', alter_sys=True)\n"
)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _overrides(data: Path) -> list[str]:
    return set_args([*TINY, f"data.root={data}"])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    write_dataset(root, dict.fromkeys(CLASSES, 6), seed=0, size=32)
    return root


@pytest.fixture(scope="module")
def reference_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config trained without interruption (in-process)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(None, [*TINY, f"data.root={tiny_data}"]), run, progress=False)
    return run


def _step_of(run: Path) -> int:
    """The step recorded in ``RUN/last.json``; -1 while there is none (read as one file: the
    checkpoint writer replaces it atomically)."""
    try:
        return int(json.loads((run / "last.json").read_text())["step"])
    except FileNotFoundError:
        return -1


def _start_train(args: list[str], step_log: Path, logs: Path) -> subprocess.Popen:
    with open(logs / f"{step_log.stem}.out", "wb") as out:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-c", CLI_WITH_STEP_LOG, "train", "--quiet", *args],
            env={**_env(), "SM_STEP_LOG": str(step_log)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for_step(proc: subprocess.Popen, run: Path, above: int, timeout: float = 120.0) -> int:
    """Poll ``last.json`` until its step exceeds ``above``; the step seen, or -1 if the process
    ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = _step_of(run)
        if step > above:
            return step
        if proc.poll() is not None:
            return -1
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    raise AssertionError(f"no checkpoint past step {above} in {run} after {timeout} s")


def _sigkill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process; False if it had already finished."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _assert_checkpoints_load(run: Path) -> None:
    """What ``--resume``, ``evaluate`` and ``bank build`` read after a kill is whole."""
    last = load_run(run, "last")
    assert all(torch.isfinite(p).all() for p in last.model.state_dict().values())
    weights, state = load_train_state(run, "last")
    assert weights.keys() == last.model.state_dict().keys() and "optimizer" in state
    if (run / "best.json").is_file():
        load_run(run, "best")


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def _wait_for_temp_file(proc: subprocess.Popen, run: Path, above: int, old: set[Path]) -> int:
    """Poll until a checkpoint file is being written (a ``.*.tmp`` not in ``old`` exists); the
    step in ``last.json`` then, or -1 if the process ended first. Gives up waiting (and returns
    the step) three checkpoints later."""
    while proc.poll() is None:
        step = _step_of(run)
        if set(run.glob(".*.tmp")) - old or step > above + 3:
            return step
        time.sleep(0.001)
    return -1


def test_sigkill_during_training_resumes_to_identical_weights(
    tiny_data: Path, reference_run: Path, tmp_path: Path
) -> None:
    """Kill a real ``siamese-marrow train`` once ``last.json`` shows step >= 3, then its
    ``--resume`` while a checkpoint file is being written, then two more ``--resume`` runs at
    random moments. After every kill both checkpoints load and at most ``checkpoint_every`` (1)
    step was lost; the last ``--resume`` ends with the weights of the uninterrupted run and no
    temp files."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(6)
    kills = leftover_tmp = committed_not_moved = start = saved = 0
    for attempt, moment in enumerate(("step >= 3", "mid-write", "random", "random")):
        step_log = logs / f"steps{attempt}.log"
        if attempt == 0:
            proc = _start_train(["--out", str(run), *_overrides(tiny_data)], step_log, logs)
            seen = _wait_for_step(proc, run, above=2)
        else:
            start, stale = saved, set(run.glob(".*.tmp"))  # left by the previous kill
            proc = _start_train(["--resume", str(run)], step_log, logs)
            if moment == "mid-write":
                seen = _wait_for_temp_file(proc, run, above=start, old=stale)
            else:
                seen = _wait_for_step(proc, run, above=start)
                time.sleep(rng.uniform(0.0, 0.15))
        if seen < 0 or not _sigkill(proc):  # finished first: nothing left to interrupt
            assert proc.returncode == 0, (logs / f"{step_log.stem}.out").read_text()
            break
        kills += 1
        done = start + len(step_log.read_text().splitlines()) if step_log.exists() else start
        saved = _step_of(run)
        assert saved >= seen, "a kill rolled back a committed checkpoint"
        assert 0 <= done - saved <= 1, f"{done} steps done, last checkpoint at step {saved}"
        leftover_tmp += len(list(run.glob(".*.tmp")))
        committed_not_moved += (run / ".next.last.json").is_file()
        _assert_checkpoints_load(run)
    assert kills >= 2

    final = subprocess.run(
        [sys.executable, "-m", "siamese_marrow.cli", "train", "--quiet", "--resume", str(run)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["steps"] == STEPS
    _weights_equal(reference_run, run)
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]  # no epoch logged twice after a kill
    assert list(run.glob(".*.tmp")) == []
    # no staged or temporary file left; the run lock file stays (removing a lock file is racy)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]
    _assert_checkpoints_load(run)
    print(
        f"\ntraining: {kills} kills, all loadable, resumed to identical weights; "
        f"{leftover_tmp} temp file(s) left by kills, removed on resume; "
        f"{committed_not_moved} kill(s) between a commit and its move into place"
    )


def test_checkpoint_save_interrupted_at_every_file_operation_leaves_old_or_new(
    reference_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deterministic companion of the random kills: stop a save of ``last`` at each of its
    renames in turn; ``last`` then loads as exactly the old or the new checkpoint, and the next
    save leaves no staged or temp files."""
    from siamese_marrow.models.checkpoint import save_checkpoint

    real_replace = os.replace
    seen_new = seen_old = 0
    for stop_at in range(20):
        run = tmp_path / f"run{stop_at}"
        shutil.copytree(reference_run, run)
        old = load_run(run, "last")
        _, train_state = load_train_state(run, "last")
        want_old = load_file(str(reference_run / "last.safetensors"))
        with torch.no_grad():
            for p in old.model.parameters():
                p.add_(1.0)
        want_new = {k: v.clone() for k, v in old.model.state_dict().items()}
        calls = {"n": 0}

        def replace(src: Any, dst: Any, calls: dict[str, int] = calls, stop: int = stop_at) -> None:
            if calls["n"] == stop:
                raise KeyboardInterrupt("killed")
            calls["n"] += 1
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            save_checkpoint(run, "last", old.model, old.cfg, old.classes, {"step": 99}, train_state)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        loaded = load_run(run, "last")
        load_train_state(run, "last")
        new = loaded.meta["step"] == 99
        want = want_new if new else want_old
        for k, v in loaded.model.state_dict().items():
            assert torch.equal(v, want[k]), k
        seen_new, seen_old = seen_new + new, seen_old + (not new)
        if finished:
            break
        save_checkpoint(run, "last", old.model, old.cfg, old.classes, {"step": 100}, train_state)
        assert load_run(run, "last").meta["step"] == 100
        staged_or_temp = [p.name for p in run.iterdir() if p.name.startswith(".")]
        assert staged_or_temp in ([], [".lock"])  # the run lock file of the copied run may stay
    assert finished and seen_old >= 3 and seen_new >= 2, (seen_old, seen_new)


# --- SIGKILL while a bank is saved ---------------------------------------------------------------

#: Builds banks A (200 anchors) and B (A + 100) once, saves A to BANK, then for each "go X" line
#: forks a child that saves X, the other, X, ... to BANK forever, writing "start X" / "done X"
#: to LOG around each save. The test SIGKILLs the child; the parent reaps it and says "reaped".
BANK_WRITER = """
import os, sys
import numpy as np
from siamese_marrow.models.checkpoint import load_run
from siamese_marrow.index.bank import AnchorBank

run, target, log = sys.argv[1:4]
loaded = load_run(run)


def bank(n):
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, loaded.model.dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    b = AnchorBank(loaded)
    paths = [f"/cells/{i}.png" for i in range(n)]
    b.add_embeddings(e[:n], paths, ["ABC"[i % 3] for i in range(n)])
    return b


banks = {"A": bank(200), "B": bank(300)}
banks["A"].save(target)
print("ready", flush=True)
for line in sys.stdin:
    first = line.split()[1]
    order = [first, "B" if first == "A" else "A"]
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            i = 0
            while True:
                name = order[i % 2]
                os.write(fd, f"start {name}\\n".encode())
                banks[name].save(target)
                os.write(fd, f"done {name}\\n".encode())
                i += 1
        finally:
            os._exit(1)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _readline(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise AssertionError(f"bank writer silent for {timeout} s")
    line = proc.stdout.readline()
    assert line, f"bank writer died: {proc.stderr.read()}"
    return line.strip()


def _tiny_run(run: Path) -> Path:
    """An untrained tiny model saved as a run (enough to own a bank)."""
    from siamese_marrow.models import build_model
    from siamese_marrow.models.checkpoint import save_checkpoint

    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    save_checkpoint(run, "best", build_model(cfg.model), cfg, list(CLASSES))
    return run


def _expected_banks(dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return {"A": e[:200], "B": e}


def _content(bank: AnchorBank, expected: dict[str, np.ndarray]) -> str:
    """Which of A and B the loaded bank is, exactly (embeddings, anchors, index)."""
    for name, emb in expected.items():
        if len(bank) == len(emb) and np.array_equal(bank.embeddings, emb):
            n = len(emb)
            assert [a["id"] for a in bank.anchors] == list(range(n))
            assert [a["label"] for a in bank.anchors] == ["ABC"[i % 3] for i in range(n)]
            assert bank.index.ntotal == n and bank.next_id == n
            return name
    raise AssertionError(f"bank holds {len(bank)} anchors equal to neither A nor B")


KILLS = 8


def test_sigkill_during_bank_save_leaves_old_or_new_bank(tmp_path: Path) -> None:
    """Eight kills at random moments of a save loop: each time the bank loads and is exactly the
    bank that was there before the interrupted save or the one being saved."""
    run, target, log = _tiny_run(tmp_path / "run"), tmp_path / "bank", tmp_path / "saves.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", BANK_WRITER, str(run), str(target), str(log)],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    rng = random.Random(6)
    outcomes: dict[str, int] = {"old": 0, "new": 0}
    try:
        assert _readline(proc) == "ready"
        loaded_run = load_run(run)
        expected = _expected_banks(loaded_run.model.dim)
        on_disk = _content(AnchorBank.load(target, loaded_run), expected)
        for _ in range(KILLS):
            log.write_text("")
            first = "B" if on_disk == "A" else "A"
            proc.stdin.write(f"go {first}\n")
            proc.stdin.flush()
            pid = int(_readline(proc))
            time.sleep(rng.uniform(0.01, 0.4))
            os.kill(pid, signal.SIGKILL)
            assert _readline(proc) == "reaped"
            lines = log.read_text().split()
            bank = AnchorBank.load(target, run=run)
            got = _content(bank, expected)
            if not lines:
                assert got == on_disk
                outcomes["old"] += 1
            elif lines[-2] == "done":
                assert got == lines[-1]
                outcomes["new"] += 1
            else:
                new = lines[-1]
                old = on_disk if len(lines) == 2 else lines[-3]
                assert got in (old, new)
                outcomes["new" if got == new else "old"] += 1
            on_disk = got
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()
    assert sum(outcomes.values()) == KILLS
    bank.save(target)  # the next save clears whatever a kill left beside the bank
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bank.lock", "bank", "run", "saves.log"]
    print(f"\nbank: {KILLS} kills, all loadable: {outcomes['old']} old / {outcomes['new']} new")


# --- NaN ------------------------------------------------------------------------------------------


def _train_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["train", "--quiet", *args])
    return code, capsys.readouterr().err


def _nan_loss_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = train_mod.siamese_loss, {"n": 0}

    def loss(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        value, parts = real(*args, **kwargs)
        return (value * float("nan") if calls["n"] == step else value), parts

    monkeypatch.setattr(train_mod, "siamese_loss", loss)


def _nan_grads_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at 0): the weights become NaN."""
    real, calls = train_mod.siamese_loss, {"n": 0}

    def loss(model: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        value, parts = real(model, *args, **kwargs)
        if calls["n"] == step:
            p = next(model.parameters())
            value = value + 0.0 * (p - p.detach()).abs().sqrt().sum()
        return value, parts

    monkeypatch.setattr(train_mod, "siamese_loss", loss)


@pytest.mark.parametrize("fault", ["nan_loss", "nan_weights", "lr_1e30"])
def test_nan_stops_with_one_line_and_keeps_a_finite_checkpoint(
    fault: str,
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    extra: list[str] = []
    if fault == "nan_loss":
        _nan_loss_at(7, monkeypatch)
    elif fault == "nan_weights":
        _nan_grads_at(7, monkeypatch)
    else:
        extra = ["--set", "train.lr=1e30", "--set", "train.backbone_lr=1e30"]
    code, err = _train_cli(["--out", str(run), *_overrides(tiny_data), *extra], capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("siamese-marrow train: error: ") and "last good checkpoint" in err
    saved = _step_of(run)
    assert f"step {saved + 1}" in err  # the step that failed, right after the kept one
    if fault != "lr_1e30":
        assert saved == 6
    _assert_checkpoints_load(run)
    for name, w in load_file(str(run / "last.safetensors")).items():
        assert torch.isfinite(w).all(), name


# --- untrusted files ------------------------------------------------------------------------------


class _RunsCode:
    """A pickle that writes ``marker`` when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def trained(reference_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    return run


@pytest.fixture
def saved_bank(trained: Path, tmp_path: Path) -> Path:
    loaded = load_run(trained)
    emb = _expected_banks(loaded.model.dim)["A"][:30]
    bank = AnchorBank(loaded)
    bank.add_embeddings(
        emb, [f"/cells/{i}.png" for i in range(30)], ["AB"[i % 2] for i in range(30)]
    )
    return bank.save(tmp_path / "bank")


def test_runs_and_banks_load_without_unpickling(
    trained: Path, saved_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unpickling called while loading a checkpoint or bank")

    real_torch_load, real_np_load = torch.load, np.load
    torch_loads: list[Any] = []

    def torch_load(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        torch_loads.append(args[0])
        return real_torch_load(*args, **kwargs)

    def np_load(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("allow_pickle") is False, "np.load may unpickle"
        return real_np_load(*args, **kwargs)

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", torch_load)
    monkeypatch.setattr(np, "load", np_load)
    load_run(trained, "best")
    load_run(trained, "last")
    load_train_state(trained, "last")
    assert len(AnchorBank.load(saved_bank, run=trained)) == 30
    assert [Path(p).name for p in torch_loads] == ["last.state.pt"]


def test_tampered_weights_are_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A different but valid safetensors file (fits the model) in place of the weights."""
    weights = trained / "last.safetensors"
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="sha256"):
        load_run(trained, "last")
    code, err = _train_cli(["--resume", str(trained)], capsys)
    assert code == 2 and "sha256" in err and "Traceback" not in err, err


def _write_pickle(path: Path, marker: Path, how: str) -> None:
    if how == "torch.save":
        torch.save({"optimizer": _RunsCode(marker), "scheduler": {}, "state_json": "{}"}, path)
    else:
        path.write_bytes(pickle.dumps(_RunsCode(marker)))


@pytest.mark.parametrize(
    "how, rehash",
    [("torch.save", False), ("torch.save", True), ("raw pickle", True)],
    ids=["torch-save", "torch-save-rehashed", "raw-pickle-rehashed"],
)
def test_malicious_training_state_is_refused_without_running_code(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, rehash: bool
) -> None:
    """A pickle that would run code as ``last.state.pt``; with ``rehash`` the attacker also
    rewrote the sha256 in ``last.json``, so only the weights-only unpickler stands in the way."""
    marker = tmp_path / "pwned"
    state = trained / "last.state.pt"
    _write_pickle(state, marker, how)
    if rehash:
        meta = json.loads((trained / "last.json").read_text())
        meta["state_sha256"] = hashlib.sha256(state.read_bytes()).hexdigest()
        (trained / "last.json").write_text(json.dumps(meta))
    code, err = _train_cli(["--resume", str(trained)], capsys)
    assert not marker.exists(), "unpickling ran code"
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "last.state.pt" in err
    assert ("sha256" in err) != rehash, err
    if rehash:
        assert "weights_only=False" not in err  # never advise the unsafe way out
    with pytest.raises(CheckpointError):
        load_train_state(trained, "last")
    assert not marker.exists()


def _edit_json(path: Path, change: Any) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _pickled_embeddings(bank: Path, marker: Path) -> None:
    """embeddings.npy as an object array (pickled inside), its hash updated in the manifest."""
    arr = np.empty(1, dtype=object)
    arr[0] = _RunsCode(marker)
    with open(bank / "embeddings.npy", "wb") as f:
        np.save(f, arr, allow_pickle=True)
    digest = hashlib.sha256((bank / "embeddings.npy").read_bytes()).hexdigest()
    _edit_json(bank / "manifest.json", lambda m: m["files"].update({"embeddings.npy": digest}))


def _set_label(anchors: list[dict[str, Any]]) -> None:
    anchors[0]["label"] = "B" if anchors[0]["label"] == "A" else "A"


TAMPER = {
    "anchors.json relabelled": (
        lambda b, m: _edit_json(b / "anchors.json", _set_label),
        "anchors.json does not match",
    ),
    "manifest: other weights sha256": (
        lambda b, m: _edit_json(b / "manifest.json", lambda x: x.update(weights_sha256="0" * 64)),
        "weights differ",
    ),
    "manifest: other hash for index.faiss": (
        lambda b, m: _edit_json(
            b / "manifest.json", lambda x: x["files"].update({"index.faiss": "0" * 64})
        ),
        "index.faiss does not match the sha256",
    ),
    "manifest: file list emptied": (
        lambda b, m: _edit_json(b / "manifest.json", lambda x: x.update(files={})),
        "is missing",
    ),
    "manifest: not JSON": (
        lambda b, m: (b / "manifest.json").write_bytes(b"\x80\x04K\x01."),
        "damaged",
    ),
    "manifest: other format": (
        lambda b, m: _edit_json(b / "manifest.json", lambda x: x.update(format="x")),
        "not an anchor-bank manifest",
    ),
    "embeddings.npy pickled, manifest rehashed": (_pickled_embeddings, "cannot be read"),
}


@pytest.mark.parametrize("kind", list(TAMPER))
def test_tampered_bank_is_refused(
    kind: str, trained: Path, saved_bank: Path, tmp_path: Path
) -> None:
    tamper, message = TAMPER[kind]
    marker = tmp_path / "pwned"
    tamper(saved_bank, marker)
    with pytest.raises(BankError, match=message):
        AnchorBank.load(saved_bank, run=trained)
    assert not marker.exists()
