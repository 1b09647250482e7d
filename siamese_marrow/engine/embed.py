"""Batched embedding of a dataset (no augmentation), with a timing breakdown."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.datasets import collate_images
from ..models import Backbone, SiameseNet


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
