"""Batched embedding of a dataset or of image files (no augmentation), with a timing breakdown."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.datasets import collate_images
from ..data.io import load_rgb
from ..data.transforms import eval_transform
from .backbone import Backbone
from .siamese import SiameseNet


@torch.no_grad()
def embed_dataset(
    model: SiameseNet | Backbone,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    desc: str = "embed",
    timing: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` float32 and labels ``(N,)`` int64 of every item, in dataset order.

    ``device`` defaults to the model's. When ``timing`` is given it receives ``load_s`` (decode
    and transform, waiting for the loader), ``backbone_s`` (``model.embed`` only) and ``total_s``.
    """
    t_start = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
    )
    feats, labels = [], []
    load = backbone = 0.0
    t = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        t1 = time.perf_counter()
        load += t1 - t
        feats.append(model.embed(x.to(device)).float().cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        labels.append(y)
        t = time.perf_counter()
        backbone += t - t1
    model.train(was_training)
    if timing is not None:
        timing.update(load_s=load, backbone_s=backbone, total_s=time.perf_counter() - t_start)
    if not feats:
        return np.zeros((0, model.dim), np.float32), np.zeros((0,), np.int64)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


ImageLike = str | Path | Image.Image


class _ImageDataset(Dataset):
    """Image files (decoded with :func:`load_rgb`) or PIL images, through ``transform``."""

    def __init__(self, items: Sequence[ImageLike], transform: Any) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        img = item.convert("RGB") if isinstance(item, Image.Image) else load_rgb(item)
        return self.transform(img), 0


def embed_paths(
    model: SiameseNet,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> tuple[np.ndarray, dict[str, float]]:
    """Embeddings ``(N, D)`` float32 of image files (no augmentation) and a timing breakdown:
    ``backbone_s`` (``model.embed`` only), ``load_s`` (decode + transform) and ``total_s``."""
    timing: dict[str, float] = {}
    ds = _ImageDataset([str(p) for p in paths], eval_transform(model.backbone.spec))
    emb, _ = embed_dataset(
        model, ds, batch_size, num_workers, progress=progress, desc=desc, timing=timing
    )
    return emb.astype(np.float32, copy=False), timing


def embed_images(
    model: SiameseNet,
    images: Sequence[ImageLike] | torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32, unit norm, of image files, PIL images (any mode; decoded
    and resized as for evaluation) or a preprocessed tensor ``(N, 3, H, W)``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a tensor (N, 3, H, W), got {tuple(images.shape)}")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = [
                model.embed(images[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, len(images), batch_size)
            ]
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, model.dim), np.float32)
    ds = _ImageDataset(list(images), eval_transform(model.backbone.spec))
    emb, _ = embed_dataset(model, ds, batch_size)
    return emb.astype(np.float32, copy=False)
