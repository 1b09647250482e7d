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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import Config
from ..data.datasets import CellDataset, Sample
from ..data.prepare import PreparedData, prepare_data
from ..data.sampler import PKBatchSampler
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError, SiameseMarrowError
from ..index.faiss_index import FaissIndex
from ..models import SiameseNet, build_model, create_backbone
from ..utils import atomic_write_text, resolve_device
from .checkpoint import load_train_state, read_meta, save_checkpoint
from .embed import embed_dataset
from .losses import siamese_loss
from .metrics import classification_metrics, headline
from .probe import logistic_probe


class TrainingError(SiameseMarrowError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


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


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


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


@torch.no_grad()
def predict_consensus(
    model: SiameseNet,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    chunk: int = 256,
) -> np.ndarray:
    """g ``(Q, C)`` of queries ``(Q, D)`` against all anchors ``(M, D)``."""
    probs = []
    for i in range(0, len(queries), chunk):
        l1, l2 = model.score_matrix(anchors, queries[i : i + chunk])
        probs.append(
            model.consensus((torch.sigmoid(l1), torch.sigmoid(l2)), anchor_labels, num_classes)
        )
    return torch.cat(probs).float().cpu().numpy()


def cap_per_class(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    """At most ``per_class`` samples of each class (seeded choice; 0 = all)."""
    if per_class <= 0:
        return samples
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by.setdefault(s.label, []).append(i)
    keep: list[int] = []
    for ix in by.values():
        keep += ix if len(ix) <= per_class else rng.choice(ix, per_class, replace=False).tolist()
    return [samples[i] for i in sorted(keep)]


def validate(
    model: SiameseNet,
    anchor_ds: CellDataset,
    val_ds: CellDataset,
    cfg: Config,
    device: str,
) -> dict[str, Any]:
    """Pair ROC-AUC among validation images and consensus metrics against training anchors."""
    from sklearn.metrics import roc_auc_score

    kw = dict(batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers, device=device)
    fa, ya = embed_dataset(model, anchor_ds, desc="val anchors", **kw)
    fv, yv = embed_dataset(model, val_ds, desc="val", **kw)
    model.eval()
    n_cls = len(val_ds.classes)
    fa_t, fv_t = torch.from_numpy(fa).to(device), torch.from_numpy(fv).to(device)
    g = predict_consensus(model, fa_t, torch.from_numpy(ya).to(device), fv_t, n_cls)
    metrics = classification_metrics(yv, g.argmax(1), val_ds.classes)
    with torch.no_grad():
        l1, l2 = (t.float().cpu() for t in model.score_matrix(fv_t, fv_t))
    iu = np.triu_indices(len(yv), k=1)
    same = (yv[:, None] == yv[None, :])[iu]
    out = {"val_" + k: v for k, v in headline(metrics).items()}
    if 0 < same.sum() < len(same):
        h1, h2 = torch.sigmoid(l1).numpy()[iu], torch.sigmoid(l2).numpy()[iu]
        out["val_pair_auc"] = float(roc_auc_score(same, (h1 + h2) / 2))
        out["val_pair_auc_concat"] = float(roc_auc_score(same, h1))
        out["val_pair_auc_hadamard"] = float(roc_auc_score(same, h2))
    out["val_metrics"] = metrics
    return out


def frozen_probe(data: PreparedData, cfg: Config, device: str) -> dict[str, Any]:
    """Logistic regression on the frozen pretrained features of the same backbone (no projection),
    trained on the training split, scored on the validation split."""
    bb = (
        create_backbone(
            cfg.model.backbone, cfg.model.pretrained, embed_dim=0, img_size=cfg.model.img_size
        )
        .to(device)
        .eval()
    )
    tf = eval_transform(bb.spec)
    kw = dict(batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers, device=device)

    xtr, ytr = embed_dataset(bb, CellDataset(data.train, data.classes, tf), desc="probe", **kw)
    xva, yva = embed_dataset(bb, CellDataset(data.val, data.classes, tf), desc="probe", **kw)
    return logistic_probe(xtr, ytr, xva, yva, data.classes, seed=cfg.train.seed)


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


def train(
    cfg: Config, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a SiameseNet on balanced pairs; checkpoints and logs go to ``out``.

    Returns a summary: best validation metrics, the frozen-feature probe's metrics (when
    ``train.baseline_probe``), wall time and the number of steps.
    """
    out = Path(out)
    t_start = time.perf_counter()
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    if cfg.sampler.k_per_class < 2:
        raise ConfigError(
            f"sampler.k_per_class={cfg.sampler.k_per_class}: training needs K >= 2 so every class "
            "in a batch has a similar pair (a one-image class repeats as augmented views)"
        )
    # everything that can be refused is checked before any file is written
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    n_trainable = model.backbone.apply_freeze(tc.freeze)
    FaissIndex(model.dim, cfg.bank.index)  # the bank.index of this run's banks must parse
    data = prepare_data(cfg.data, synth_dir=out / "synthetic-data", progress=progress)
    if not data.val:
        raise ConfigError("data.val_fraction is 0: training needs a validation split")
    state = TrainState()
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
    steps_per_epoch = len(sampler)
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc.warmup_steps, total_steps)
    )
    if resume:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(**json.loads(saved["state_json"]))

    spec = model.backbone.spec
    loader_ds = SeededAugDataset(train_ds, train_transform(spec, cfg.augment))
    eval_tf = eval_transform(spec)
    anchor_ds = CellDataset(
        cap_per_class(data.train, tc.val_anchors_per_class, tc.seed), data.classes, eval_tf
    )
    val_ds = CellDataset(data.val, data.classes, eval_tf)
    log_path = out / "metrics.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if resume:  # drop records logged after the checkpoint (a kill between log and checkpoint)
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in state.history))

    summary: dict[str, Any] = {
        "run": str(out),
        "classes": data.classes,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "trainable_backbone_params": n_trainable,
        "steps_per_epoch": steps_per_epoch,
        "device": device,
    }
    if sampler.singletons:
        summary["single_image_classes"] = sampler.singletons
    if data.bad:
        summary["skipped_images"] = len(data.bad)
        (out / "skipped_images.json").write_text(
            json.dumps([b.__dict__ for b in data.bad], indent=2)
        )
    probe_path = out / "baseline_probe.json"
    if tc.baseline_probe and not probe_path.is_file():
        probe = frozen_probe(data, cfg, device)
        probe_path.write_text(json.dumps(probe, indent=2))
    if probe_path.is_file():
        summary["baseline_probe"] = headline(json.loads(probe_path.read_text()))

    def checkpoint(name: str, meta: dict[str, Any], with_state: bool) -> None:
        bad = [
            k
            for k, v in model.state_dict().items()
            if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:  # a finite loss can still step into NaN/inf weights: never save those
            raise TrainingError(
                f"the weights became non-finite ({', '.join(bad[:3])}) at step {state.step}; "
                f"the last good checkpoint in {out} is kept. Lower train.lr / "
                "train.backbone_lr or check the data"
            )
        train_state = None
        if with_state:
            train_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state_json": json.dumps(state.__dict__),
            }
        save_checkpoint(out, name, model, cfg, data.classes, meta=meta, train_state=train_state)

    amp = tc.amp and device == "cuda"
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp)
    while state.epoch < tc.epochs:
        epoch = state.epoch
        sampler.set_epoch(epoch, start_batch=state.batch)
        loader = DataLoader(
            loader_ds,
            batch_sampler=sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        model.train()
        t_epoch = time.perf_counter()
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not progress,
            initial=state.batch,
            total=steps_per_epoch,
            leave=False,
        )
        for x, y in bar:
            step_seed = tc.seed * 1_000_003 + state.step
            gen = torch.Generator().manual_seed(step_seed)
            torch.manual_seed(step_seed)
            x, y = x.to(device, non_blocking=True), y.to(device)
            with autocast:
                emb = model.embed(x).float()
            loss, parts = siamese_loss(
                model,
                emb,
                y,
                len(data.classes),
                tc.bce_weight,
                tc.consensus_weight,
                cfg.sampler.hard_negatives,
                gen,
            )
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {float(loss.detach())} at epoch {epoch + 1}, "
                    f"step {state.step + 1}; "
                    f"the last good checkpoint in {out} is kept. Lower train.lr / "
                    "train.backbone_lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.batch += 1
            n_batches += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", acc=f"{parts['batch_acc']:.2f}")
            if (
                tc.checkpoint_every
                and state.step % tc.checkpoint_every == 0
                and state.batch < steps_per_epoch
            ):
                checkpoint("last", {"epoch": epoch, "step": state.step}, with_state=True)
        bar.close()
        train_time = time.perf_counter() - t_epoch
        val = validate(model, anchor_ds, val_ds, cfg, device)
        val_metrics = val.pop("val_metrics")
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            **{f"train_{k}": round(v / max(1, n_batches), 5) for k, v in sums.items()},
            **{k: round(v, 5) for k, v in val.items()},
            "lr": scheduler.get_last_lr()[0],
            "tau": float(model.consensus_head.tau.detach()),
            "train_seconds": round(train_time, 2),
            "train_images_per_s": round(
                n_batches * sampler.p * sampler.k / max(train_time, 1e-9), 1
            ),
            "epoch_seconds": round(time.perf_counter() - t_epoch, 2),
        }
        state.epoch += 1
        state.batch = 0
        improved = val["val_balanced_accuracy"] > state.best
        if improved:
            state.best, state.best_epoch, state.bad_epochs = (
                val["val_balanced_accuracy"],
                epoch + 1,
                0,
            )
        else:
            state.bad_epochs += 1
        state.history.append(record)
        _log(log_path, record)
        if progress:
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
            checkpoint("best", meta, with_state=False)
            (out / "val_metrics.json").write_text(json.dumps(val_metrics, indent=2))
        checkpoint("last", meta, with_state=True)
        if tc.early_stop_patience and state.bad_epochs >= tc.early_stop_patience:
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
