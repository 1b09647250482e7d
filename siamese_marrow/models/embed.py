"""Batched embedding of a dataset or of image files, with a timing breakdown.

No augmentation by default; ``tta=True`` embeds each image as the mean of the embeddings of its 8
views under the dihedral group (4 rotations by 90 degrees, each also mirrored), renormalised:
cells have no up or left, so the mean is invariant to how the slide was turned.

On CUDA the fast path applies: pinned host memory and non-blocking copies, channels_last input
batches and bf16 autocast (``amp``; the embeddings are returned in float32, renormalised). On
the CPU nothing changes. Inside :func:`.sharding.sharded_embedding` under torchrun each rank
embeds its share of a dataset and every rank gets all of it (:mod:`.sharding`).
"""

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
from ..data.transforms import DataSpec, eval_transform
from . import sharding
from .backbone import Backbone
from .siamese import SiameseNet


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of ``x (B, C, H, W)`` under the dihedral group D4 (``x`` itself first)."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1)) if k else x
        views += [r, torch.flip(r, dims=(-1,))]
    return views


def embed_views(model: SiameseNet | Backbone, x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, 8, D)``: the unit-norm embedding of each of the 8 dihedral views of
    each image, in :func:`dihedral_views` order (one forward pass of ``8 B`` images)."""
    views = torch.cat(dihedral_views(x))
    return model.embed(views).reshape(8, len(x), -1).transpose(0, 1)


def views_to_embeddings(views: np.ndarray, tta: bool) -> np.ndarray:
    """The embeddings ``(N, D)`` float32 that ``embed_*`` gives, from the ``(N, 8, D)`` view
    embeddings of the same images: their renormalised mean (``tta``) or the first view, the
    image as it is."""
    if not tta:
        return np.ascontiguousarray(views[:, 0], dtype=np.float32)
    mean = views.astype(np.float32).mean(1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def embed_batch(model: SiameseNet | Backbone, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, D)`` unit-norm embeddings; with ``tta`` the renormalised mean over
    the 8 dihedral views (:func:`embed_views`)."""
    if not tta:
        return model.embed(x)
    return torch.nn.functional.normalize(embed_views(model, x).float().mean(1), dim=-1)


def _embed_on(
    model: SiameseNet | Backbone,
    x: torch.Tensor,
    device: torch.device,
    tta: bool,
    amp: bool,
    views: bool = False,
) -> torch.Tensor:
    """Unit-norm float32 embeddings ``(B, D)`` of a CPU batch ``x`` computed on ``device`` (the
    CUDA fast path there: non-blocking copy, channels_last, bf16 autocast when ``amp``);
    ``views``: ``(B, 8, D)``, each dihedral view's (:func:`embed_views`)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        return embed_views(model, batch) if views else embed_batch(model, batch, tta)

    if device.type != "cuda":
        return run(x.to(device)).float()
    x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        emb = run(x)
    return torch.nn.functional.normalize(emb.float(), dim=-1) if amp else emb.float()


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
    tta: bool = False,
    amp: bool = True,
    views: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` float32 and labels ``(N,)`` int64 of every item, in dataset order
    (``tta``: each the mean over its 8 dihedral views, :func:`embed_batch`; ``views``: instead
    ``(N, 8, D)``, each view's own embedding, :func:`embed_views`; ``amp``: bf16 autocast on
    CUDA).

    ``device`` defaults to the model's. When ``timing`` is given it receives ``load_s`` (decode
    and transform, waiting for the loader), ``backbone_s`` (``model.embed`` only) and ``total_s``
    (under :func:`.sharding.sharded_embedding`, load and backbone times are this rank's share).
    """
    t_start = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    options = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        desc=desc,
        timing=timing,
        tta=tta,
        amp=amp,
        views=views,
    )
    width = model.dim * (8 if views else 1)  # the views of an image travel as one flat row
    if sharding.is_sharding() and len(dataset):
        emb, labels = sharding.embed_in_shards(
            _embed_here, model, dataset, width, device, progress, **options
        )
    else:
        emb, labels = _embed_here(model, dataset, device=device, progress=progress, **options)
    if timing is not None:
        timing["total_s"] = time.perf_counter() - t_start
    return (emb.reshape(len(emb), 8, model.dim) if views else emb), labels


def _embed_here(
    model: SiameseNet | Backbone,
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
    desc: str,
    timing: dict[str, float] | None,
    tta: bool,
    amp: bool,
    views: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`embed_dataset` in this process (``views``: rows ``(n, 8 D)``)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
    )
    feats, labels = [], []
    load = backbone = 0.0
    t = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        t1 = time.perf_counter()
        load += t1 - t
        feats.append(_embed_on(model, x, device, tta, amp, views).flatten(1).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        labels.append(y)
        t = time.perf_counter()
        backbone += t - t1
    model.train(was_training)
    if timing is not None:
        timing.update(load_s=load, backbone_s=backbone)
    if not feats:
        return np.zeros((0, model.dim * (8 if views else 1)), np.float32), np.zeros((0,), np.int64)
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


def _spec_of(model: SiameseNet | Backbone) -> DataSpec:
    """The input spec of a model, or of a bare backbone."""
    return model.spec if isinstance(model, Backbone) else model.backbone.spec


def embed_paths(
    model: SiameseNet | Backbone,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    tta: bool = False,
    views: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """Embeddings ``(N, D)`` float32 of image files (``tta``: mean over the 8 dihedral views;
    ``views``: ``(N, 8, D)``, each view's) and a timing breakdown: ``backbone_s``
    (``model.embed`` only), ``load_s`` (decode + transform) and ``total_s``."""
    timing: dict[str, float] = {}
    ds = _ImageDataset([str(p) for p in paths], eval_transform(_spec_of(model)))
    emb, _ = embed_dataset(
        model,
        ds,
        batch_size,
        num_workers,
        progress=progress,
        desc=desc,
        timing=timing,
        tta=tta,
        views=views,
    )
    return emb.astype(np.float32, copy=False), timing


def embed_paths_and_views(
    model: SiameseNet | Backbone,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    tta: bool = False,
    views: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """:func:`embed_paths`'s embeddings ``(N, D)`` and, with ``views``, the view embeddings
    ``(N, 8, D)`` they come from (else None), and the timing: one pass gives both, the views and
    their TTA mean (or the image itself, :func:`views_to_embeddings`)."""
    emb, timing = embed_paths(model, paths, batch_size, num_workers, progress, desc, tta, views)
    if not views:
        return emb, None, timing
    return views_to_embeddings(emb, tta), emb, timing


def embed_images(
    model: SiameseNet | Backbone,
    images: Sequence[ImageLike] | torch.Tensor,
    batch_size: int = 64,
    tta: bool = False,
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32, unit norm, of image files, PIL images (any mode; decoded
    and resized as for evaluation) or a preprocessed tensor ``(N, 3, H, W)`` (``tta``: mean over
    the 8 dihedral views)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a tensor (N, 3, H, W), got {tuple(images.shape)}")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = [
                _embed_on(model, images[i : i + batch_size], device, tta, amp=True).cpu()
                for i in range(0, len(images), batch_size)
            ]
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, model.dim), np.float32)
    ds = _ImageDataset(list(images), eval_transform(_spec_of(model)))
    emb, _ = embed_dataset(model, ds, batch_size, tta=tta)
    return emb.astype(np.float32, copy=False)
