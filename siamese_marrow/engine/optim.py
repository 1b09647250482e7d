"""The optimiser and learning-rate schedule shared by the siamese trainer and the softmax
baseline."""

from __future__ import annotations

import math

import torch

from ..config import Config


def cosine_with_warmup(warmup: int, total: int):  # noqa: ANN201
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(
    model: torch.nn.Module, cfg: Config, extra: torch.nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW; the backbone at ``backbone_lr``, projection, heads and ``extra`` (a loss with
    parameters) at ``lr``; no decay on 1-D parameters (biases, norms, the temperature)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    named = list(model.named_parameters())
    if extra is not None:
        named += [(f"loss.{n}", p) for n, p in extra.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.model.")
        groups.setdefault((is_backbone, p.ndim <= 1), []).append(p)
    tc = cfg.train
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": tc.backbone_lr if is_backbone else tc.lr,
                "weight_decay": 0.0 if no_decay else tc.weight_decay,
            }
            for (is_backbone, no_decay), params in sorted(groups.items())
        ]
    )
