"""Training: a step lowers the loss, resume is exact, checkpoints reload in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, load_tool

from siamese_marrow.config import Config, load_config
from siamese_marrow.data.synth import write_dataset
from siamese_marrow.engine import train as train_mod
from siamese_marrow.engine.losses import siamese_loss
from siamese_marrow.engine.train import build_optimizer, train
from siamese_marrow.errors import TrainingError
from siamese_marrow.models import build_model
from siamese_marrow.models.checkpoint import load_run, load_train_state

TINY = [
    *TINY_MODEL,
    "model.embed_dim=16",
    "model.head_hidden=16",
    "sampler.p_classes=3",
    "sampler.k_per_class=2",
    "sampler.batches_per_epoch=3",
    "train.epochs=2",
    "train.warmup_steps=2",
    "train.eval_batch_size=16",
    "train.threads=1",
    "data.val_fraction=0.25",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, {"BLA": 6, "EOS": 6, "LYT": 6, "NGS": 1}, seed=0, size=32)
    return root


def tiny_cfg(data: Path, *extra: str):  # noqa: ANN201
    return load_config(None, [*TINY, f"data.root={data}", *extra])


def test_training_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg)
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = []
    for _ in range(8):
        loss, parts = siamese_loss(
            model, model.embed(x), y, 4, generator=torch.Generator().manual_seed(0)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert parts["pairs"] == 16  # 4 classes x (2 similar + 2 dissimilar)
    assert losses[-1] < 0.7 * losses[0], losses


def test_single_image_class_trains_through_augmented_views(tiny_data: Path, tmp_path: Path) -> None:
    summary = train(tiny_cfg(tiny_data, "train.epochs=1"), tmp_path / "run", progress=False)
    assert summary["single_image_classes"] == ["NGS"]
    log = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
    for name in ("config.yaml", "classes.json", "last.safetensors", "last.state.pt", "best.json"):
        assert (tmp_path / "run" / name).is_file(), name


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "last.safetensors"))


def train_until_interrupted(
    cfg: Config, out: Path, monkeypatch: pytest.MonkeyPatch, at_step: int
) -> None:
    """Train ``cfg`` into ``out`` until a KeyboardInterrupt as step ``at_step`` computes its
    loss (the steps before it done, their checkpoints written)."""
    calls = {"n": 0}
    real_loss = train_mod.siamese_loss

    def interrupting_loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "siamese_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(train_mod, "siamese_loss", real_loss)


@pytest.mark.parametrize("ema", ["train.ema_decay=0", "train.ema_decay=0.6"])
def test_interrupted_and_resumed_equals_uninterrupted(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: str
) -> None:
    cfg = tiny_cfg(tiny_data, "train.checkpoint_every=2", ema)
    train(cfg, tmp_path / "straight", progress=False)

    # step 5, in epoch 2 (3 steps an epoch), after the step-4 checkpoint
    train_until_interrupted(cfg, tmp_path / "resumed", monkeypatch, at_step=5)
    meta = json.loads((tmp_path / "resumed" / "last.json").read_text())
    assert meta["step"] == 4  # a mid-epoch checkpoint: resuming must restart inside epoch 2
    train(cfg, tmp_path / "resumed", resume=True, progress=False)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    log = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2]


def ema_by_hand(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """e_1 = w_1, e_t = decay e_(t-1) + (1 - decay) w_t over the float weights after each step."""
    e = {k: v.double() for k, v in steps[0].items() if v.is_floating_point()}
    for w in steps[1:]:
        e = {k: decay * v + (1 - decay) * w[k].double() for k, v in e.items()}
    return e


def test_ema_checkpoints_hold_the_average_of_the_weights_after_each_step(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.ema_decay d: the saved model is e_t = d e_(t-1) + (1 - d) w_t over the raw weights
    w_t after each optimizer step t, from e_1 = w_1 (timm's ModelEmaV3 given the step); "last"
    keeps w_T to resume from."""
    decay = 0.6
    raw: list[dict[str, torch.Tensor]] = []
    real_step = train_mod._step

    def recording_step(job, x, y, epoch):  # noqa: ANN001, ANN202
        if not raw:
            raw.append({k: v.detach().clone() for k, v in job.model.state_dict().items()})
        parts = real_step(job, x, y, epoch)
        raw.append({k: v.detach().clone() for k, v in job.model.state_dict().items()})
        return parts

    monkeypatch.setattr(train_mod, "_step", recording_step)
    run = tmp_path / "run"
    train(
        tiny_cfg(tiny_data, f"train.ema_decay={decay}", "data.val_fraction=0"), run, progress=False
    )
    assert len(raw) == 1 + 6  # the initial weights, then 2 epochs x 3 steps
    expected = ema_by_hand(raw[1:], decay)
    saved = _weights(run)
    best = load_run(run).model.state_dict()
    moved = 0
    for k, e in expected.items():
        np.testing.assert_allclose(saved[k].double(), e, rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(best[k].double(), e, rtol=1e-5, atol=1e-6, err_msg=k)
        moved += not torch.allclose(e.float(), raw[-1][k], atol=1e-4)
    assert moved > len(expected) // 2  # the average is not the last weights
    state = torch.load(run / "last.state.pt", weights_only=True)
    for k, w in raw[-1].items():
        assert torch.equal(state["raw_weights"][k], w), k
    assert "raw_weights" not in torch.load(
        _train_off(tiny_data, tmp_path) / "last.state.pt", weights_only=True
    )


def _train_off(data: Path, tmp_path: Path) -> Path:
    run = tmp_path / "off"
    train(tiny_cfg(data, "train.epochs=1", "data.val_fraction=0"), run, progress=False)
    return run


def test_softmax_baseline_keeps_the_same_average_of_its_weights(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's softmax classifier under train.ema_decay: the same recurrence over the
    weights after each of its optimizer steps as the siamese model's."""
    from siamese_marrow.data.prepare import prepare_data
    from siamese_marrow.engine import softmax as softmax_mod

    decay, raw = 0.6, []
    real_build = softmax_mod.build_optimizer

    def recording_build(net, cfg):  # noqa: ANN001, ANN202
        opt = real_build(net, cfg)
        opt.register_step_post_hook(
            lambda *_: raw.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        )
        return opt

    monkeypatch.setattr(softmax_mod, "build_optimizer", recording_build)
    cfg = tiny_cfg(tiny_data, f"train.ema_decay={decay}", "data.val_fraction=0")
    net, info = softmax_mod.train_softmax(cfg, prepare_data(cfg.data))
    assert info["steps"] == len(raw) == 6
    expected = ema_by_hand(raw, decay)
    got = net.state_dict()
    for k, e in expected.items():
        np.testing.assert_allclose(got[k].double(), e, rtol=1e-5, atol=1e-6, err_msg=k)
    assert not torch.allclose(got["head.weight"], raw[-1]["head.weight"])


def test_bench_scores_the_raw_weights_of_an_averaged_run(tiny_data: Path, tmp_path: Path) -> None:
    """tools/bench_methods.py --raw-weights: the same run's model without its weight average."""
    bench = load_tool("bench_methods")
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, "train.ema_decay=0.6", "data.val_fraction=0"), run, progress=False)
    raw = load_train_state(run, "last")[1]["raw_weights"]
    got = bench.load_siamese(run, raw_weights=True).model.state_dict()
    average = bench.load_siamese(run).model.state_dict()
    assert got.keys() == raw.keys()
    for k in raw:
        assert torch.equal(got[k], raw[k]), k
    assert not torch.equal(average["head_concat.first.weight"], raw["head_concat.first.weight"])
    with pytest.raises(SystemExit, match=r"last keeps no raw weights .* drop --raw-weights"):
        bench.load_siamese(_train_off(tiny_data, tmp_path), raw_weights=True)


@pytest.mark.parametrize(("saved", "resumed"), [("0", "0.9"), ("0.9", "0")])
def test_resume_with_another_ema_setting_is_refused(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: str, resumed: str
) -> None:
    """A run saved without an EMA has no average to go on from; one saved with it holds the
    average as its weights, which are not the weights to continue training."""
    common = ["train.epochs=2", "data.val_fraction=0", "train.checkpoint_every=2"]
    run = tmp_path / "run"
    saved_cfg = tiny_cfg(tiny_data, *common, f"train.ema_decay={saved}")
    train_until_interrupted(saved_cfg, run, monkeypatch, at_step=4)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    cfg = tiny_cfg(tiny_data, *common, f"train.ema_decay={resumed}")
    said = "train.ema_decay=0" if saved == "0" else "train.ema_decay > 0"
    with pytest.raises(TrainingError, match=rf"last was saved with {said}; resume it with"):
        train(cfg, run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_checkpoint_gives_identical_embeddings_in_a_fresh_process(
    tiny_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, "train.epochs=1"), run, progress=False)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    here = load_run(run).model.embed(x).detach().numpy()
    code = (
        "import numpy as np, torch, sys\n"
        "from siamese_marrow.models.checkpoint import load_run\n"
        f"m = load_run(r'{run}').model\n"
        f"x = torch.from_numpy(np.load(r'{tmp_path / 'x.npy'}'))\n"
        f"np.save(r'{tmp_path / 'e.npy'}', m.embed(x).detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), here, atol=1e-6)


def test_outputs_get_the_usual_file_mode(tiny_data: Path, tmp_path: Path) -> None:
    import os

    from siamese_marrow.utils import umask

    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, "train.epochs=1"), run, progress=False)
    for name in ("last.safetensors", "last.json", "config.yaml", "classes.json"):
        assert os.stat(run / name).st_mode & 0o777 == 0o666 & ~umask(), name
