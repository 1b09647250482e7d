"""Batched embedding of a dataset."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.datasets import collate_images
from ..models import SiameseNet


@torch.no_grad()
def embed_dataset(
    model: SiameseNet,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "embed",
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` float32 and labels ``(N,)`` int64 of every item, in dataset order."""
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
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        feats.append(model.embed(x.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    if not feats:
        return np.zeros((0, model.dim), np.float32), np.zeros((0,), np.int64)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()
