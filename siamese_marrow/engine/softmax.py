"""The baseline the pair model must beat: a plain fine-tuned softmax classifier of the same
backbone, trained on the same images under the same budget.

:func:`train_softmax` fine-tunes the config's timm backbone (same pretrained weights, input size,
freeze policy) plus one Linear layer on its pooled features with cross-entropy, using the siamese
trainer's own pieces: the P x K sampler (so every step sees the same number of images of the same
classes), the augmentation, AdamW with the backbone and head learning rates, warm-up + cosine
schedule, gradient clipping, the per-(seed, step) RNG and, with ``train.ema_decay``, the same
moving average of the weights. It keeps the last epoch's weights (their average with
``train.ema_decay``; nothing is chosen on any split). Benchmarks call it; it is not a product model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import Config
from ..data.datasets import CellDataset, Sample, SeededAugDataset, collate_images
from ..data.prepare import PreparedData
from ..data.sampler import PKBatchSampler
from ..data.transforms import eval_transform, train_transform
from ..models import Backbone, create_backbone
from ..models.embed import dihedral_views
from ..utils import resolve_device
from .checkpointing import weight_average
from .optim import build_optimizer, cosine_with_warmup


class SoftmaxNet(nn.Module):
    """The backbone's pooled features ``(B, F)`` and a Linear head ``(B, C)``. ``backbone``,
    ``dim`` and ``embed`` (the penultimate features, L2-normalised) make it usable by the
    embedding functions; parameter names ``backbone.model.*`` give the backbone
    ``train.backbone_lr`` and the head ``train.lr`` in :func:`.optim.build_optimizer`."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.num_features
        self.head = nn.Linear(self.dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.model(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, F)`` unit-norm penultimate features."""
        return F.normalize(self.features(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, C)`` logits."""
        return self.head(self.backbone.drop(self.features(x)))


def train_softmax(
    cfg: Config, data: PreparedData, progress: bool = False
) -> tuple[SoftmaxNet, dict[str, Any]]:
    """Fine-tune a :class:`SoftmaxNet` on ``data.train`` for ``cfg.train.epochs`` epochs of the
    sampler's batches; returns the net (last epoch) and ``{"steps", "images_seen",
    "train_loop_s", "history"}``."""
    tc, sc = cfg.train, cfg.sampler
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    mc = cfg.model
    backbone = create_backbone(
        mc.backbone, mc.pretrained, embed_dim=0, img_size=mc.img_size, drop_rate=mc.drop_rate
    )
    net = SoftmaxNet(backbone, len(data.classes))
    net.backbone.apply_freeze(tc.freeze)
    net.to(device)
    optimizer = build_optimizer(net, cfg)
    ema = weight_average(net, tc.ema_decay)
    train_ds = CellDataset(data.train, data.classes)
    sampler = PKBatchSampler.from_config(train_ds.get_labels(), cfg.sampler, tc.seed, data.classes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc.warmup_steps, tc.epochs * len(sampler))
    )
    ds = SeededAugDataset(train_ds, train_transform(net.backbone.spec, cfg.augment))
    amp = tc.amp and device == "cuda"
    step, history, loop_s = 0, [], 0.0
    for epoch in range(tc.epochs):
        sampler.set_epoch(epoch)
        loader = DataLoader(
            ds, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate_images
        )
        net.train()
        t0, losses = time.perf_counter(), []
        for x, y in tqdm(loader, desc=f"softmax {epoch + 1}/{tc.epochs}", disable=not progress):
            torch.manual_seed(tc.seed * 1_000_003 + step)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = net(x.to(device)).float()
            loss = F.cross_entropy(logits, y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(net, step=step)
            losses.append(float(loss.detach()))
        loop_s += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 5)})
    if ema is not None:
        net = ema.module
    net.eval()
    return net, {
        "steps": step,
        "images_seen": step * sc.p_classes * sc.k_per_class,
        "train_loop_s": round(loop_s, 2),
        "history": history,
    }


@torch.no_grad()
def softmax_predict(
    net: SoftmaxNet,
    samples: list[Sample],
    batch_size: int = 64,
    tta: bool = False,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class ``(N,)`` and unit-norm penultimate features ``(N, F)`` of the samples;
    with ``tta`` both come from the mean pooled feature over the 8 dihedral views (the head is
    linear, so that is also the mean of the views' logits)."""
    classes = classes if classes is not None else sorted({s.label for s in samples})
    ds = CellDataset(samples, classes, eval_transform(net.backbone.spec))
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_images)
    device = next(net.parameters()).device
    net.eval()
    preds, feats = [], []
    for x, _ in loader:
        x = x.to(device)
        views = dihedral_views(x) if tta else [x]
        raw = torch.stack([net.features(v).float() for v in views]).mean(0)
        preds.append(net.head(raw).argmax(1).cpu())
        feats.append(F.normalize(raw, dim=-1).cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()
