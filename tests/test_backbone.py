"""Backbone factory: offline Lite0 weights, timm contract, close matches, freeze policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from siamese_marrow.data.datasets import CellDataset, load_samples
from siamese_marrow.data.splits import split_samples
from siamese_marrow.data.transforms import eval_transform
from siamese_marrow.engine.probe import logistic_probe
from siamese_marrow.errors import ConfigError
from siamese_marrow.models.backbone import (
    LITE0_ARCH,
    create_backbone,
    create_timm,
    lite0_weights_path,
)


def test_lite0_weights_load_strictly_into_timm() -> None:
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    full = timm.create_model(LITE0_ARCH, pretrained=False)
    assert len(sd) == len(full.state_dict()) == 296
    model = create_timm(LITE0_ARCH, "lite0")  # num_classes=0: the ImageNet classifier is dropped
    ours = model.state_dict()
    src = list(sd.values())
    for i, (name, t) in enumerate(ours.items()):
        assert torch.equal(t, src[i]), name


def test_embedding_contract() -> None:
    bb = create_backbone(LITE0_ARCH, "none", embed_dim=32, img_size=64)
    assert bb.spec.img_size == 64 and bb.spec.mean == (0.5, 0.5, 0.5)
    assert bb.num_features == 1280 and bb.dim == 32
    out = bb(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    # input size resolved from the model when not given
    assert create_backbone("resnet18", "none").spec.img_size == 224
    # a pre-logits head (MobileNetV3) pools to head_hidden_size, not num_features
    mnv3 = create_backbone("mobilenetv3_small_050", "none", embed_dim=16, img_size=64)
    assert mnv3.num_features == 1024 and mnv3(torch.randn(2, 3, 64, 64)).shape == (2, 16)


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="efficientnet_b5"):
        create_timm("efficientnet_b55")


def test_lite0_refused_for_other_architectures() -> None:
    with pytest.raises(ConfigError, match=LITE0_ARCH):
        create_timm("resnet18", "lite0")


def test_missing_weights_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not none, lite0, hub or an existing weights file"):
        create_timm("resnet18", str(tmp_path / "nope.safetensors"))


def test_local_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = create_timm("resnet18", str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_freeze_policies() -> None:
    bb = create_backbone(LITE0_ARCH, "none", embed_dim=8, img_size=32)
    total = sum(p.numel() for p in bb.model.parameters())
    assert bb.apply_freeze("none") == total
    assert bb.apply_freeze("all") == 0
    last2 = bb.apply_freeze("last-2")
    assert 0 < last2 < total
    assert bb.proj.weight.requires_grad
    assert not bb.model.conv_stem.weight.requires_grad
    bb.train()
    assert not bb.model.bn1.training  # frozen BatchNorm keeps its statistics
    with pytest.raises(ConfigError, match="blocks"):
        bb.apply_freeze("last-999")


def _features(name_pretrained: str, ds: CellDataset) -> np.ndarray:
    torch.manual_seed(0)
    bb = create_backbone(LITE0_ARCH, name_pretrained, embed_dim=0, img_size=128).eval()
    ds.transform = eval_transform(bb.spec)
    with torch.no_grad():
        xs = torch.stack([ds[i][0] for i in range(len(ds))])
        return torch.cat([bb(xs[i : i + 64]) for i in range(0, len(xs), 64)]).numpy()


def test_pretrained_features_beat_random_init_on_bm7(
    bm7: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = load_samples(bm7)
    rng = np.random.default_rng(0)
    by_class: dict[str, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    subset = [s for v in by_class.values() for s in rng.permutation(np.array(v, object))[:90]]
    parts = split_samples(subset, val_fraction=1 / 3, seed=0)
    classes = sorted(by_class)
    tr, te = CellDataset(parts["train"], classes), CellDataset(parts["val"], classes)
    acc = {}
    for source in ("lite0", "none"):
        xtr, xte = _features(source, tr), _features(source, te)
        m = logistic_probe(xtr, np.array(tr.targets), xte, np.array(te.targets), classes)
        acc[source] = m["balanced_accuracy"]
    with capsys.disabled():  # shown in the normal test output, pass or fail
        print(
            f"\nbm7 probe balanced accuracy: Lite0 ImageNet {acc['lite0']:.3f}, "
            f"random init {acc['none']:.3f} (chance {1 / len(classes):.3f})"
        )
    assert acc["lite0"] > 0.45
    assert acc["lite0"] > acc["none"] + 0.15
