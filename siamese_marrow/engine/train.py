"""Training on balanced pairs: one backbone pass per image, pairs reuse the embeddings.

``train(cfg, out)`` runs the whole job and returns a summary dict; ``train(cfg, out,
resume=True)`` continues from ``out/last`` exactly: model, optimizer, scheduler, sampler position
and RNG are restored, and because every batch's augmentation and every step's RNG are functions of
(seed, epoch, batch), the resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import Config
from ..data.datasets import CellDataset, collate_images
from ..data.prepare import PreparedData, prepare_data, synth_dir_of
from ..data.sampler import PKBatchSampler
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError, TrainingError
from ..index.faiss_index import FaissIndex
from ..models import SiameseNet, build_model
from ..models.checkpoint import load_train_state, read_meta, save_checkpoint
from ..utils import atomic_write_text, resolve_device
from .losses import siamese_loss
from .metrics import headline
from .runs import check_run_folder, clear_run_files, run_lock
from .validation import cap_per_class, frozen_probe, validate


class SeededAugDataset(Dataset):
    """Wraps a CellDataset; items are requested as ``(index, seed)`` and the augmentation of that
    item runs under that seed, independently of worker processes and of the global RNG."""

    def __init__(self, base: CellDataset, transform: Any) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        img = self.base.load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(img)
        return x, self.base.targets[index]


def cosine_with_warmup(warmup: int, total: int):  # noqa: ANN201
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: SiameseNet, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; the backbone at ``backbone_lr``, projection and heads at ``lr``; no decay on 1-D
    parameters (biases, norms, the temperature)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
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


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (or next to start)
    batch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps done
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


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
    val_ds: CellDataset
    state: TrainState
    summary: dict[str, Any]
    progress: bool

    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"


def _check_request(cfg: Config) -> None:
    if cfg.sampler.k_per_class < 2:
        raise ConfigError(
            f"sampler.k_per_class={cfg.sampler.k_per_class}: training needs K >= 2 so every class "
            "in a batch has a similar pair (a one-image class repeats as augmented views)"
        )


def _set_up(
    cfg: Config, out: Path, resume: bool, progress: bool, force: bool, stack: ExitStack
) -> _Job:
    """Model, data, sampler, optimizer and schedule (restored from ``out/last`` on resume).
    Everything that can be refused is checked before any file is written; then the run folder's
    lock is taken (held until ``stack`` closes) and a fresh start clears an earlier run's files."""
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    _check_request(cfg)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    n_trainable = model.backbone.apply_freeze(tc.freeze)
    FaissIndex(model.dim, cfg.bank.index)  # the bank.index of this run's banks must parse
    if not resume:
        check_run_folder(out, force)
    stack.enter_context(run_lock(out))
    if not resume:
        check_run_folder(out, force)  # again under the lock: another run may have finished here
        clear_run_files(out)
    data = prepare_data(cfg.data, synth_dir=synth_dir_of(out), progress=progress)
    if not data.val:
        raise ConfigError("data.val_fraction is 0: training needs a validation split")
    if resume:
        weights, saved = load_train_state(out, "last")
        model.load_state_dict(weights, strict=True)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    train_ds = CellDataset(data.train, data.classes)
    sampler = PKBatchSampler(
        train_ds.get_labels(),
        cfg.sampler.p_classes,
        cfg.sampler.k_per_class,
        cfg.sampler.batches_per_epoch,
        cfg.sampler.class_weighting,
        seed=tc.seed,
        class_names=data.classes,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc.warmup_steps, tc.epochs * len(sampler))
    )
    state = TrainState()
    if resume:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(**json.loads(saved["state_json"]))
    spec = model.backbone.spec
    eval_tf = eval_transform(spec)
    summary: dict[str, Any] = {
        "run": str(out),
        "classes": data.classes,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "trainable_backbone_params": n_trainable,
        "steps_per_epoch": len(sampler),
        "device": device,
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
        CellDataset(data.val, data.classes, eval_tf),
        state,
        summary,
        progress,
    )


def _open_run_folder(job: _Job, resume: bool) -> None:
    """Create the run folder, trim the log on resume, note skipped images, run the probe."""
    out, data, summary = job.out, job.data, job.summary
    out.mkdir(parents=True, exist_ok=True)
    if resume:  # drop records logged after the checkpoint (a kill between log and checkpoint)
        atomic_write_text(job.log_path, "".join(json.dumps(r) + "\n" for r in job.state.history))
    if job.sampler.singletons:
        summary["single_image_classes"] = job.sampler.singletons
    if data.bad:
        summary["skipped_images"] = len(data.bad)
        (out / "skipped_images.json").write_text(
            json.dumps([b.__dict__ for b in data.bad], indent=2)
        )
    probe_path = out / "baseline_probe.json"
    if job.cfg.train.baseline_probe and not probe_path.is_file():
        probe = frozen_probe(data, job.cfg, job.device)
        probe_path.write_text(json.dumps(probe, indent=2))
    if probe_path.is_file():
        summary["baseline_probe"] = headline(json.loads(probe_path.read_text()))


def _checkpoint(job: _Job, name: str, meta: dict[str, Any], with_state: bool) -> None:
    """Save ``name`` (best/last); never saves non-finite weights."""
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
    train_state = None
    if with_state:
        train_state = {
            "optimizer": job.optimizer.state_dict(),
            "scheduler": job.scheduler.state_dict(),
            "state_json": json.dumps(job.state.__dict__),
        }
    save_checkpoint(
        job.out, name, job.model, job.cfg, job.data.classes, meta=meta, train_state=train_state
    )


def _step(job: _Job, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
    """One optimizer step on a P x K batch; its RNG is a function of (seed, step)."""
    tc, state, model = job.cfg.train, job.state, job.model
    step_seed = tc.seed * 1_000_003 + state.step
    gen = torch.Generator().manual_seed(step_seed)
    torch.manual_seed(step_seed)
    x, y = x.to(job.device, non_blocking=True), y.to(job.device)
    amp = tc.amp and job.device == "cuda"
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
        emb = model.embed(x).float()
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    job.optimizer.step()
    job.scheduler.step()
    state.step += 1
    state.batch += 1
    return parts


def _train_epoch(job: _Job, epoch: int) -> tuple[dict[str, float], int]:
    """The rest of epoch ``epoch`` (from ``state.batch``); summed loss parts and batch count."""
    tc, state, sampler = job.cfg.train, job.state, job.sampler
    sampler.set_epoch(epoch, start_batch=state.batch)
    loader = DataLoader(
        job.loader_ds,
        batch_sampler=sampler,
        num_workers=job.cfg.data.num_workers,
        collate_fn=collate_images,
        persistent_workers=False,
    )
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
            _checkpoint(job, "last", {"epoch": epoch, "step": state.step}, with_state=True)
    bar.close()
    return sums, n_batches


def _end_epoch(
    job: _Job, epoch: int, sums: dict[str, float], n_batches: int, t_epoch: float
) -> bool:
    """Validate, log, keep the best and last checkpoints; True when early stopping ends the run."""
    state, model, sampler = job.state, job.model, job.sampler
    train_time = time.perf_counter() - t_epoch
    val = validate(model, job.anchor_ds, job.val_ds, job.cfg, job.device)
    val_metrics = val.pop("val_metrics")
    record = {
        "epoch": epoch + 1,
        "step": state.step,
        **{f"train_{k}": round(v / max(1, n_batches), 5) for k, v in sums.items()},
        **{k: round(v, 5) for k, v in val.items()},
        "lr": job.scheduler.get_last_lr()[0],
        "tau": float(model.consensus_head.tau.detach()),
        "train_seconds": round(train_time, 2),
        "train_images_per_s": round(n_batches * sampler.p * sampler.k / max(train_time, 1e-9), 1),
        "epoch_seconds": round(time.perf_counter() - t_epoch, 2),
    }
    state.epoch += 1
    state.batch = 0
    improved = val["val_balanced_accuracy"] > state.best
    if improved:
        state.best, state.best_epoch, state.bad_epochs = val["val_balanced_accuracy"], epoch + 1, 0
    else:
        state.bad_epochs += 1
    state.history.append(record)
    _log(job.log_path, record)
    if job.progress:
        tqdm.write(
            f"epoch {epoch + 1}: loss {record.get('train_loss', 0):.4f} "
            f"val bal.acc {val['val_balanced_accuracy']:.4f} acc {val['val_accuracy']:.4f} "
            f"pair AUC {val.get('val_pair_auc', float('nan')):.4f}"
        )
    meta = {
        "epoch": epoch + 1,
        "step": state.step,
        "val": headline(val_metrics) | {"pair_auc": val.get("val_pair_auc")},
    }
    if improved:
        _checkpoint(job, "best", meta, with_state=False)
        (job.out / "val_metrics.json").write_text(json.dumps(val_metrics, indent=2))
    _checkpoint(job, "last", meta, with_state=True)
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
    with ExitStack() as stack:
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
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
