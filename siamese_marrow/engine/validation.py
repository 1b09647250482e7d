"""What training measures each epoch: the consensus of validation images against training
anchors, pair ROC-AUC among validation images, and the frozen-feature probe baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.datasets import CellDataset, Sample
from ..data.prepare import PreparedData
from ..data.transforms import eval_transform
from ..models import SiameseNet, create_backbone
from ..models.embed import embed_dataset
from .distributed import on_main
from .metrics import classification_metrics, headline
from .probe import logistic_probe


def cap_per_class(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    """At most ``per_class`` samples of each class (seeded choice; 0 = all)."""
    if per_class <= 0:
        return samples
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by.setdefault(s.label, []).append(i)
    keep: list[int] = []
    for ix in by.values():
        keep += ix if len(ix) <= per_class else rng.choice(ix, per_class, replace=False).tolist()
    return [samples[i] for i in sorted(keep)]


def validate(
    model: SiameseNet,
    anchor_ds: CellDataset,
    val_ds: CellDataset,
    cfg: Config,
    device: str,
) -> dict[str, Any]:
    """Pair ROC-AUC among validation images and consensus metrics against training anchors."""
    from sklearn.metrics import roc_auc_score

    kw = dict(
        batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.data.num_workers,
        device=device,
        amp=cfg.train.amp,
    )
    fa, ya = embed_dataset(model, anchor_ds, desc="val anchors", **kw)
    fv, yv = embed_dataset(model, val_ds, desc="val", **kw)
    model.eval()
    n_cls = len(val_ds.classes)
    fa_t, fv_t = torch.from_numpy(fa).to(device), torch.from_numpy(fv).to(device)
    g, _, _ = model.anchor_consensus(fa_t, torch.from_numpy(ya).to(device), fv_t, n_cls)
    metrics = classification_metrics(yv, g.argmax(1).cpu().numpy(), val_ds.classes)
    with torch.no_grad():
        l1, l2 = (t.float().cpu() for t in model.score_matrix(fv_t, fv_t))
    iu = np.triu_indices(len(yv), k=1)
    same = (yv[:, None] == yv[None, :])[iu]
    out = {"val_" + k: v for k, v in headline(metrics).items()}
    if 0 < same.sum() < len(same):
        h1, h2 = torch.sigmoid(l1).numpy()[iu], torch.sigmoid(l2).numpy()[iu]
        out["val_pair_auc"] = float(roc_auc_score(same, (h1 + h2) / 2))
        out["val_pair_auc_concat"] = float(roc_auc_score(same, h1))
        out["val_pair_auc_hadamard"] = float(roc_auc_score(same, h2))
    out["val_metrics"] = metrics
    return out


def frozen_probe(data: PreparedData, cfg: Config, device: str) -> dict[str, Any]:
    """Logistic regression on the frozen pretrained features of the same backbone (no projection),
    trained on the training split, scored on the validation split (on the test split when there
    is no validation split: the probe chooses nothing, so it may see the test images). Under
    torchrun every rank calls it: the images are embedded in shards, the probe fit on rank 0."""
    bb = (
        create_backbone(
            cfg.model.backbone, cfg.model.pretrained, embed_dim=0, img_size=cfg.model.img_size
        )
        .to(device)
        .eval()
    )
    tf = eval_transform(bb.spec)
    kw = dict(
        batch_size=cfg.train.eval_batch_size,
        num_workers=cfg.data.num_workers,
        device=device,
        amp=cfg.train.amp,
    )

    xtr, ytr = embed_dataset(bb, CellDataset(data.train, data.classes, tf), desc="probe", **kw)
    held, split = (data.val, "val") if data.val else (data.test, "test")
    xva, yva = embed_dataset(bb, CellDataset(held, data.classes, tf), desc="probe", **kw)
    # under torchrun every rank embedded its share of the images; rank 0 alone fits the probe
    out = on_main(lambda: logistic_probe(xtr, ytr, xva, yva, data.classes, seed=cfg.train.seed))
    return {**out, "scored_on": split}
