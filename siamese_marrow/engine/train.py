"""Training on balanced pairs: one backbone pass per image, pairs reuse the embeddings.

``train(cfg, out)`` runs the whole job and returns a summary dict; ``train(cfg, out,
resume=True)`` continues from ``out/last`` exactly: model, optimizer, scheduler, sampler position
and RNG are restored, and because every batch's augmentation and every step's RNG are functions of
(seed, epoch, batch), the resumed run ends with the same weights as an uninterrupted one.

With ``train.ema_decay`` > 0 the model is a moving average of the weights (:mod:`.checkpointing`).

Under ``torchrun`` the same function trains with DistributedDataParallel (:mod:`.distributed`):
each rank draws its own P x K share of every step, the loss sees the global batch, and rank 0
alone takes the run folder's lock and writes checkpoints, metrics and the summary.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from ..config import Config
from ..data.datasets import CellDataset, SeededAugDataset
from ..data.prepare import PreparedData, prepare_data, synth_dir_of
from ..data.sampler import PKBatchSampler
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError, TrainingError
from ..index.faiss_index import FaissIndex
from ..models import SiameseNet, build_model
from ..models.checkpoint import load_train_state, read_meta
from ..models.sharding import sharded_embedding
from ..utils import atomic_write_text
from . import distributed
from .checkpointing import checkpoint, resume_weights, weight_average
from .losses import ProxyLoss, siamese_loss
from .metrics import headline
from .optim import build_optimizer, cosine_with_warmup
from .runs import check_run_folder, clear_run_files, run_lock
from .validation import cap_per_class, frozen_probe, validate


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (or next to start)
    batch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps done
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1  # processes that trained it (torchrun); a resume needs as many


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class _Job:
    """Everything one training run holds between its steps."""

    cfg: Config
    out: Path
    device: str
    model: SiameseNet
    data: PreparedData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: PKBatchSampler
    loader_ds: SeededAugDataset
    anchor_ds: CellDataset
    val_ds: CellDataset | None  # None: no validation split (the last epoch is the model)
    state: TrainState
    summary: dict[str, Any]
    progress: bool
    proxy_loss: ProxyLoss | None = None
    ranks: distributed.Ranks = field(default_factory=distributed.Ranks)
    forward: torch.nn.Module | None = None  # distributed.training_forward: the step's loss
    loader: Any = None  # the training DataLoader (one for the run: its workers persist)
    ema: ModelEmaV3 | None = None  # train.ema_decay > 0: the averaged weights, which are the model

    @property
    def scored(self) -> SiameseNet:
        """The model that validation scores and the checkpoints hold: the EMA of the weights
        when ``train.ema_decay`` > 0, else the weights being trained."""
        return self.model if self.ema is None else self.ema.module

    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"


def _check_request(cfg: Config) -> None:
    if cfg.sampler.k_per_class < 2:
        raise ConfigError(
            f"sampler.k_per_class={cfg.sampler.k_per_class}: training needs K >= 2 so every class "
            "in a batch has a similar pair (a one-image class repeats as augmented views)"
        )
    if cfg.data.val_fraction == 0 and cfg.train.early_stop_patience:
        raise ConfigError(
            f"train.early_stop_patience={cfg.train.early_stop_patience} needs a validation split; "
            "data.val_fraction is 0 (the model is the last epoch's): set one or turn it off"
        )


def _claim_run_folder(
    cfg: Config, out: Path, resume: bool, progress: bool, force: bool, stack: ExitStack
) -> PreparedData:
    """Take the run folder's lock (held until ``stack`` closes), let a fresh start clear an
    earlier run's files, and prepare the data (rank 0's part under torchrun)."""
    if not resume:
        check_run_folder(out, force)
    stack.enter_context(run_lock(out))
    if not resume:
        check_run_folder(out, force)  # again under the lock: another run may have finished here
        clear_run_files(out)
    return prepare_data(cfg.data, synth_dir=synth_dir_of(out), progress=progress)


def _load_last(
    out: Path, model: SiameseNet, proxy: ProxyLoss | None, ema_decay: float
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Resume: ``out/last``'s weights into ``model`` and ``proxy``; its training state and the
    weight average to go on from (None without ``train.ema_decay``)."""
    weights, saved = load_train_state(out, "last")
    weights, averaged = resume_weights(out, weights, saved, ema_decay)
    model.load_state_dict(weights, strict=True)
    if proxy is not None:
        proxy.load_state_dict(saved["proxy_loss"])
    return saved, averaged


def _set_up(
    cfg: Config, out: Path, resume: bool, progress: bool, force: bool, stack: ExitStack
) -> _Job:
    """Model, data, sampler, optimizer and schedule (restored from ``out/last`` on resume).
    Everything that can be refused is checked before any file is written; then the run folder's
    lock is taken (held until ``stack`` closes) and a fresh start clears an earlier run's files."""
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    _check_request(cfg)
    ranks = distributed.join(cfg, stack)
    device, progress = ranks.device, progress and ranks.main
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    n_trainable = model.backbone.apply_freeze(tc.freeze)
    if cfg.bank.index != "auto":  # the bank.index of this run's banks must parse
        FaissIndex(model.dim, cfg.bank.index)
    data = distributed.on_main(lambda: _claim_run_folder(cfg, out, resume, progress, force, stack))
    proxy = (
        ProxyLoss(len(data.classes), model.dim, tc.proxy_temperature) if tc.proxy_weight else None
    )
    saved, averaged = _load_last(out, model, proxy, tc.ema_decay) if resume else ({}, None)
    model.to(device)
    ema = weight_average(model, tc.ema_decay, averaged)  # a copy of the model, on its device
    if proxy is not None:
        proxy.to(device)
    forward = distributed.training_forward(model, proxy, ranks, cfg)
    optimizer = build_optimizer(model, cfg, proxy)
    train_ds = CellDataset(data.train, data.classes)
    sampler = PKBatchSampler.from_config(
        train_ds.get_labels(), cfg.sampler, tc.seed, data.classes, ranks.rank, ranks.world
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc.warmup_steps, tc.epochs * len(sampler))
    )
    state = TrainState(world_size=ranks.world)
    if resume:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(**json.loads(saved["state_json"]))
        distributed.check_resume(state.world_size, ranks, out)
    if ranks.world > 1:  # validation and the probe: each rank embeds its share
        stack.enter_context(sharded_embedding())
    spec = model.backbone.spec
    eval_tf = eval_transform(spec)
    summary: dict[str, Any] = {
        "run": str(out),
        "classes": data.classes,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "trainable_backbone_params": n_trainable,
        "steps_per_epoch": len(sampler),
        "device": device,
        "world_size": ranks.world,
    }
    return _Job(
        cfg,
        out,
        device,
        model,
        data,
        optimizer,
        scheduler,
        sampler,
        SeededAugDataset(train_ds, train_transform(spec, cfg.augment)),
        CellDataset(
            cap_per_class(data.train, tc.val_anchors_per_class, tc.seed), data.classes, eval_tf
        ),
        CellDataset(data.val, data.classes, eval_tf) if data.val else None,
        state,
        summary,
        progress,
        proxy,
        ranks,
        forward,
        ema=ema,
    )


def _open_run_folder(job: _Job, resume: bool) -> None:
    """Create the run folder, trim the log on resume, note skipped images, run the probe."""
    out, data, summary = job.out, job.data, job.summary
    out.mkdir(parents=True, exist_ok=True)
    # on resume, drop records logged after the checkpoint (a kill between log and checkpoint)
    if resume and job.ranks.main:
        atomic_write_text(job.log_path, "".join(json.dumps(r) + "\n" for r in job.state.history))
    if job.sampler.singletons:
        summary["single_image_classes"] = job.sampler.singletons
    if data.bad:
        summary["skipped_images"] = len(data.bad)
        if job.ranks.main:
            (out / "skipped_images.json").write_text(
                json.dumps([b.__dict__ for b in data.bad], indent=2)
            )
    probe_path = out / "baseline_probe.json"
    has_held_out = bool(data.val or data.test)
    probed = distributed.on_main(probe_path.is_file)  # rank 0 decides for every rank
    if job.cfg.train.baseline_probe and has_held_out and not probed:
        probe = frozen_probe(data, job.cfg, job.device)  # under torchrun: every rank, sharded
        if job.ranks.main:
            probe_path.write_text(json.dumps(probe, indent=2))
    if probe_path.is_file():
        summary["baseline_probe"] = headline(json.loads(probe_path.read_text()))


def _step(job: _Job, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
    """One optimizer step on a P x K batch; its RNG is a function of (seed, step)."""
    tc, state, model = job.cfg.train, job.state, job.model
    step_seed = tc.seed * 1_000_003 + state.step
    gen = torch.Generator().manual_seed(step_seed)
    torch.manual_seed(step_seed)

    def batch_loss(emb: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of the (global) batch's embeddings ``emb (N, D)`` and labels ``(N,)``."""
        loss, parts = siamese_loss(
            model,
            emb,
            y,
            len(job.data.classes),
            tc.bce_weight,
            tc.consensus_weight,
            job.cfg.sampler.hard_negatives,
            gen,
        )
        if job.proxy_loss is not None:
            proxy = job.proxy_loss(emb, y)
            loss = loss + tc.proxy_weight * proxy
            parts["proxy_ce"] = float(proxy.detach())
            parts["loss"] = float(loss.detach())
        return loss, parts

    # embeds x on the device; under torchrun the loss sees every rank's share (distributed.py)
    loss, parts = job.forward(x, y, batch_loss)
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss became {float(loss.detach())} at epoch {epoch + 1}, "
            f"step {state.step + 1}; "
            f"the last good checkpoint in {job.out} is kept. Lower train.lr / "
            "train.backbone_lr or check the data"
        )
    job.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        params = list(model.parameters())
        if job.proxy_loss is not None:
            params += list(job.proxy_loss.parameters())
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
    job.optimizer.step()
    job.scheduler.step()
    state.step += 1
    state.batch += 1
    if job.ema is not None:
        job.ema.update(model, step=state.step)
    return parts


def _train_epoch(job: _Job, epoch: int) -> tuple[dict[str, float], int]:
    """The rest of epoch ``epoch`` (from ``state.batch``); summed loss parts and batch count."""
    tc, state, sampler = job.cfg.train, job.state, job.sampler
    sampler.set_epoch(epoch, start_batch=state.batch)
    if job.loader is None:
        job.loader = distributed.train_loader(
            job.loader_ds, sampler, job.cfg.data.num_workers, job.device
        )
    loader = job.loader
    job.model.train()
    sums: dict[str, float] = {}
    n_batches = 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        disable=not job.progress,
        initial=state.batch,
        total=len(sampler),
        leave=False,
    )
    for x, y in bar:
        parts = _step(job, x, y, epoch)
        n_batches += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.set_postfix(loss=f"{parts['loss']:.3f}", acc=f"{parts['batch_acc']:.2f}")
        every = tc.checkpoint_every
        if every and state.step % every == 0 and state.batch < len(sampler):
            checkpoint(job, "last", {"epoch": epoch, "step": state.step}, with_state=True)
    bar.close()
    distributed.sync_buffers(job.model)  # every rank validates the model rank 0 checkpoints
    if job.ema is not None:
        distributed.sync_buffers(job.ema.module)
    return sums, n_batches


def _end_epoch(
    job: _Job, epoch: int, sums: dict[str, float], n_batches: int, t_epoch: float
) -> bool:
    """Validate, log, keep the best and last checkpoints; True when early stopping ends the run.
    Without a validation split, "best" is the last epoch's model, written when training ends."""
    state, sampler = job.state, job.sampler
    train_time = time.perf_counter() - t_epoch
    val: dict[str, Any] = {}
    val_metrics = None
    if job.val_ds is not None:
        # every rank embeds its share; rank 0's figures decide for all
        val = distributed.from_main(
            validate(job.scored, job.anchor_ds, job.val_ds, job.cfg, job.device)
        )
        val_metrics = val.pop("val_metrics")
    record = {
        "epoch": epoch + 1,
        "step": state.step,
        **{f"train_{k}": round(v / max(1, n_batches), 5) for k, v in sums.items()},
        **{k: round(v, 5) for k, v in val.items()},
        "lr": job.scheduler.get_last_lr()[0],
        "tau": float(job.scored.consensus_head.tau.detach()),
        "train_seconds": round(train_time, 2),
        "train_images_per_s": round(
            n_batches * sampler.p * sampler.k * job.ranks.world / max(train_time, 1e-9), 1
        ),
        "epoch_seconds": round(time.perf_counter() - t_epoch, 2),
    }
    state.epoch += 1
    state.batch = 0
    if val_metrics is None:
        improved = state.epoch == job.cfg.train.epochs
        if improved:
            state.best_epoch = epoch + 1
    else:
        improved = val["val_balanced_accuracy"] > state.best
        if improved:
            state.best, state.best_epoch = val["val_balanced_accuracy"], epoch + 1
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
    state.history.append(record)
    if job.ranks.main:
        _log(job.log_path, record)
    if job.progress:
        shown = (
            f" val bal.acc {val['val_balanced_accuracy']:.4f} acc {val['val_accuracy']:.4f} "
            f"pair AUC {val.get('val_pair_auc', float('nan')):.4f}"
            if val
            else ""
        )
        tqdm.write(f"epoch {epoch + 1}: loss {record.get('train_loss', 0):.4f}{shown}")
    meta: dict[str, Any] = {"epoch": epoch + 1, "step": state.step}
    if val_metrics is not None:
        meta["val"] = headline(val_metrics) | {"pair_auc": val.get("val_pair_auc")}
    else:
        meta["selected"] = "the last epoch (no validation split)"
    if improved:
        checkpoint(job, "best", meta, with_state=False)
        if val_metrics is not None and job.ranks.main:
            (job.out / "val_metrics.json").write_text(json.dumps(val_metrics, indent=2))
    checkpoint(job, "last", meta, with_state=True)
    patience = job.cfg.train.early_stop_patience
    return bool(patience and state.bad_epochs >= patience)


def train(
    cfg: Config,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train a SiameseNet on balanced pairs; checkpoints and logs go to ``out``.

    One process at a time trains into a folder (a second one is refused). A new run refuses a
    folder that holds a trained run or files that are not a run's, unless ``force``.
    Returns a summary: best validation metrics, the frozen-feature probe's metrics (when
    ``train.baseline_probe``), wall time and the number of steps.
    """
    lost = distributed.lost_rank_errors(cfg.scale.timeout_s, distributed.resume_hint(out))
    with ExitStack() as stack, lost:
        return _train(cfg, Path(out), resume, progress, force, stack)


def _train(
    cfg: Config, out: Path, resume: bool, progress: bool, force: bool, stack: ExitStack
) -> dict[str, Any]:
    t_start = time.perf_counter()
    job = _set_up(cfg, out, resume, progress, force, stack)
    _open_run_folder(job, resume)
    state, summary = job.state, job.summary
    while state.epoch < cfg.train.epochs:
        epoch = state.epoch
        t_epoch = time.perf_counter()
        sums, n_batches = _train_epoch(job, epoch)
        if _end_epoch(job, epoch, sums, n_batches, t_epoch):
            summary["early_stopped_at_epoch"] = epoch + 1
            break
    best = read_meta(out, "best") if (out / "best.json").is_file() else {}
    summary.update(
        {
            "epochs_run": state.epoch,
            "steps": state.step,
            "best_epoch": state.best_epoch,
            "best_val": best.get("val"),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        }
    )
    if job.ranks.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
