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


#: Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, as in scikit-image's
#: ``rgb_from_hed``: optical density in RGB of one unit of each stain.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)


class StainJitter(torch.nn.Module):
    """Random stain variation in optical-density space (Tellez et al. 2018, "HED jitter"): the
    image ``(3, H, W)`` in [0, 1] is unmixed into three stain concentrations, each is scaled by
    ``1 + U(-sigma, sigma)`` and shifted by ``U(-sigma, sigma)`` / 10, and mixed back."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("rgb_from_hed", RGB_FROM_HED.clone(), persistent=False)
        self.register_buffer("hed_from_rgb", torch.linalg.inv(RGB_FROM_HED), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        od = -torch.log(x.clamp(min=1e-6))  # (3, H, W)
        hed = torch.einsum("chw,cd->dhw", od, self.hed_from_rgb)
        scale = 1 + (torch.rand(3, 1, 1) * 2 - 1) * self.sigma
        shift = (torch.rand(3, 1, 1) * 2 - 1) * self.sigma / 10
        od = torch.einsum("dhw,dc->chw", hed * scale + shift, self.rgb_from_hed)
        return torch.exp(-od).clamp(0, 1)


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
    """Mild scale, flips and 90-degree rotations (together every view of the dihedral group),
    colour jitter, stain jitter and blur for stain and focus variation."""
    ops: list[Any] = [
        T.RandomResizedCrop(
            spec.img_size, scale=(aug.scale_min, aug.scale_max), ratio=(0.9, 1.1), antialias=True
        )
    ]
    if aug.flips:
        ops += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
    if any(v > 0 for v in (aug.brightness, aug.contrast, aug.saturation, aug.hue)):
        ops.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.blur > 0:
        ops.append(T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.2))], p=aug.blur))
    ops.append(T.ToTensor())
    if aug.stain > 0:
        ops.append(StainJitter(aug.stain))
    ops.append(T.Normalize(spec.mean, spec.std))
    if aug.rot90:
        ops.append(RandomRot90())
    return T.Compose(ops)


def as_tuple3(v: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return (a, b, c)
