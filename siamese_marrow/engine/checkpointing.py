"""What a training run writes at a checkpoint and reads back to resume.

The weights file of every checkpoint holds the model that is scored: the weights being trained,
or with ``train.ema_decay`` > 0 their exponential moving average (timm's ``ModelEmaV3``, updated
after every optimizer step). ``last`` also holds the training state: optimizer, scheduler, the
:class:`~siamese_marrow.engine.train.TrainState` as JSON, the proxy loss, and under an average the
raw weights that training goes on from. A resume under the other ``train.ema_decay`` setting is
refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3

from ..errors import TrainingError
from ..models.checkpoint import save_checkpoint


def resume_weights(
    out: Path, weights: dict[str, torch.Tensor], saved: dict[str, Any], ema_decay: float
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """From ``out/last``'s weights file and training state: the weights to go on training and
    the average to go on from (None without ``train.ema_decay``)."""
    if ema_decay > 0:  # the weights file holds the average, the state the raw weights
        if "raw_weights" not in saved:
            raise TrainingError(
                f"{out}/last was saved with train.ema_decay=0; resume it with that setting "
                "(the run's config.yaml) or start a new run"
            )
        return saved["raw_weights"], weights
    if "raw_weights" in saved:  # its weights file is an average: no run to go on from
        raise TrainingError(
            f"{out}/last was saved with train.ema_decay > 0; resume it with that setting "
            "(the run's config.yaml) or start a new run"
        )
    return weights, None


def weight_average(
    model: torch.nn.Module, ema_decay: float, averaged: dict[str, torch.Tensor] | None = None
) -> ModelEmaV3 | None:
    """The moving average of ``model``'s weights (None when ``ema_decay`` is 0), starting from
    ``averaged`` when a resume brings one."""
    if ema_decay <= 0:
        return None
    ema = ModelEmaV3(model, decay=ema_decay)
    if averaged is not None:
        ema.module.load_state_dict(averaged, strict=True)
    return ema


def checkpoint(job: Any, name: str, meta: dict[str, Any], with_state: bool) -> None:  # noqa: ANN401
    """Save ``name`` (best/last) of ``job`` (the trainer's ``_Job``: this module is below it):
    the scored model's weights, and with ``with_state`` the training state; never saves
    non-finite weights."""
    bad = [
        k
        for k, v in job.model.state_dict().items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:  # a finite loss can still step into NaN/inf weights: never save those
        raise TrainingError(
            f"the weights became non-finite ({', '.join(bad[:3])}) at step {job.state.step}; "
            f"the last good checkpoint in {job.out} is kept. Lower train.lr / "
            "train.backbone_lr or check the data"
        )
    if not job.ranks.main:  # rank 0 writes the checkpoints of a torchrun job
        return
    train_state = None
    if with_state:
        train_state = {
            "optimizer": job.optimizer.state_dict(),
            "scheduler": job.scheduler.state_dict(),
            "state_json": json.dumps(job.state.__dict__),
        }
        if job.proxy_loss is not None:
            train_state["proxy_loss"] = job.proxy_loss.state_dict()
        if job.ema is not None:
            train_state["raw_weights"] = {
                k: v.detach().cpu().contiguous() for k, v in job.model.state_dict().items()
            }
    save_checkpoint(
        job.out, name, job.scored, job.cfg, job.data.classes, meta=meta, train_state=train_state
    )
