"""Preprocessing derived from the model (size, mean, std) and augmentation for stained cells."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import transforms as T

from ..config import AugmentConfig


@dataclass(frozen=True)
class DataSpec:
    """What the backbone expects: square input side and per-channel mean and std."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class RandomRot90(torch.nn.Module):
    """Rotate a ``(C, H, W)`` tensor by a random multiple of 90 degrees (cells have no 'up')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, (1,)).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def eval_transform(spec: DataSpec) -> Callable[[Any], torch.Tensor]:
    """Resize the whole crop to the model's side (cells are centred; nothing is cut away)."""
    return T.Compose(
        [
            T.Resize((spec.img_size, spec.img_size), antialias=True),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


def train_transform(spec: DataSpec, aug: AugmentConfig) -> Callable[[Any], torch.Tensor]:
    """Mild scale, flips, 90-degree rotations and colour jitter for stain variation."""
    ops: list[Any] = [
        T.RandomResizedCrop(
            spec.img_size, scale=(aug.scale_min, aug.scale_max), ratio=(0.9, 1.1), antialias=True
        )
    ]
    if aug.flips:
        ops += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
    if any(v > 0 for v in (aug.brightness, aug.contrast, aug.saturation, aug.hue)):
        ops.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    ops += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if aug.rot90:
        ops.append(RandomRot90())
    return T.Compose(ops)


def as_tuple3(v: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return (a, b, c)
