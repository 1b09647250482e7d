"""Inference glue for the CLI: build and edit banks, classify and search images, evaluate.

Each function takes paths and plain values and returns plain dicts / lists, so the CLI only parses
arguments and prints. A ``bank`` argument is an :class:`AnchorBank` or the path of a bank
directory (whose model is then loaded from the run recorded in its manifest, or ``run``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.datasets import class_list, load_samples
from ..data.io import IMAGE_EXTENSIONS, load_rgb
from ..errors import DataError
from ..index.bank import AnchorBank, embed_paths, read_manifest, recover
from ..index.retrieval import bank_retrieval
from .checkpoint import load_run
from .fewshot import fewshot_evaluate

BankLike = AnchorBank | str | Path


def expand_images(items: Sequence[str | Path]) -> list[str]:
    """Image files named directly, plus every image under named folders (recursive, sorted)."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                str(Path(d) / f)
                for d, dirs, files in os.walk(p)
                for f in files
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise DataError(
                    f"folder {p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            out.extend(found)
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p} does not exist")
    if not out:
        raise DataError("no images given")
    return out


def open_bank(
    bank: BankLike,
    run: str | Path | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
) -> AnchorBank:
    """The bank itself, or the bank saved at a path with its model (checked by the manifest)."""
    if isinstance(bank, AnchorBank):
        return bank
    return AnchorBank.load(bank, run=run, checkpoint=checkpoint, device=device)


def bank_summary(bank: AnchorBank, path: str | Path | None = None) -> dict[str, Any]:
    return {
        "bank": str(path) if path is not None else None,
        "run": str(bank.run.run),
        "checkpoint": bank.run.name,
        "index": bank.factory,
        "anchors": len(bank),
        "classes": bank.class_counts(),
    }


def bank_info(bank_dir: str | Path) -> dict[str, Any]:
    """The manifest of a saved bank (no model is loaded)."""
    target = Path(bank_dir).absolute()
    recover(target)
    return read_manifest(target)


def bank_build(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "best",
    factory: str | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every image of ``data`` (folder or CSV) with the run's model and save a bank at
    ``out``; ``factory`` overrides the run's ``bank.index``."""
    loaded = load_run(run, checkpoint, device=device)
    samples = load_samples(data, classes)
    t = time.perf_counter()
    bank = AnchorBank.build(loaded, samples, batch_size, num_workers, factory, progress)
    bank.save(out)
    return {**bank_summary(bank, out), "seconds": round(time.perf_counter() - t, 3)}


def bank_add(
    bank_dir: str | Path,
    label: str,
    sources: Sequence[str | Path],
    *,
    run: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Add the images in ``sources`` (files or folders) as anchors of class ``label``, and save."""
    bank = open_bank(bank_dir, run, device=device)
    paths = expand_images(sources)
    ids = bank.add(paths, label, batch_size, num_workers, progress)
    bank.save(bank_dir)
    return {**bank_summary(bank, bank_dir), "added": int(len(ids)), "label": label}


def bank_remove(
    bank_dir: str | Path, label: str, *, run: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Remove every anchor of class ``label``, and save."""
    bank = open_bank(bank_dir, run, device=device)
    n = bank.remove(label)
    bank.save(bank_dir)
    return {**bank_summary(bank, bank_dir), "removed": n, "label": label}


def classify_paths_timed(
    bank: BankLike,
    paths: Sequence[str | Path],
    *,
    abstain_below: float | None = None,
    top_m: int | None = None,
    per_class_k: int | None = None,
    n_support: int = 5,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """:func:`classify_paths` plus the timing: ``load_s`` (decode + transform), ``backbone_s``,
    ``search_s``, ``heads_s``, ``total_s``, ``outside_backbone_s`` and ``outside_backbone_share``
    (the fraction of the time spent outside the backbone forward pass)."""
    bank = open_bank(bank)
    t0 = time.perf_counter()
    files = expand_images(paths)
    emb, t_embed = embed_paths(bank.model, files, batch_size, num_workers)
    result = bank.classify(
        emb,
        top_m=top_m,
        per_class_k=per_class_k,
        abstain_below=abstain_below,
        n_support=n_support,
    )
    total = time.perf_counter() - t0
    timing = {
        "images": len(files),
        "load_s": t_embed["load_s"],
        "backbone_s": t_embed["backbone_s"],
        "search_s": result.timing["search_s"],
        "heads_s": result.timing["heads_s"],
        "total_s": total,
        "outside_backbone_s": total - t_embed["backbone_s"],
        "outside_backbone_share": (total - t_embed["backbone_s"]) / total if total > 0 else 0.0,
    }
    return result.records(files), timing


def classify_paths(
    bank: BankLike, paths: Sequence[str | Path], **options: Any
) -> list[dict[str, Any]]:
    """One record per image (files, or folders expanded):
    ``{"path", "prediction": code | "uncertain", "probabilities": {code: p}, "anchors": [...]}``.

    ``options`` are those of :func:`classify_paths_timed` (abstain_below, top_m, per_class_k,
    n_support, batch_size, num_workers)."""
    return classify_paths_timed(bank, paths, **options)[0]


def format_records(records: Sequence[dict[str, Any]], fmt: str = "jsonl") -> str:
    """Classification records as ``jsonl`` (one object per line), ``json`` (a list) or ``csv``
    (``path,prediction,p_<code>...,top_anchor,top_anchor_similarity``)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "json":
        return json.dumps(list(records), indent=2) + "\n"
    if fmt != "csv":
        raise DataError(f"--format {fmt!r} is not jsonl, csv or json")
    classes = list(records[0]["probabilities"]) if records else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["path", "prediction", *[f"p_{c}" for c in classes], "top_anchor", "top_anchor_similarity"]
    )
    for r in records:
        top = r["anchors"][0] if r["anchors"] else {"path": "", "similarity": ""}
        w.writerow(
            [
                r["path"],
                r["prediction"],
                *[f"{r['probabilities'][c]:.6f}" for c in classes],
                top["path"],
                top["similarity"],
            ]
        )
    return buf.getvalue()


def search_paths(
    bank: BankLike, paths: Sequence[str | Path], k: int = 10, batch_size: int = 64
) -> list[dict[str, Any]]:
    """``[{"path": query, "neighbours": [{"path", "label", "similarity", "pair_probability"}]}]``,
    nearest first, one entry per query image."""
    bank = open_bank(bank)
    files = expand_images(paths)
    emb, _ = embed_paths(bank.model, files, batch_size)
    return [{"path": p, "neighbours": n} for p, n in zip(files, bank.search(emb, k), strict=True)]


def gallery_png(
    query_path: str | Path,
    neighbours: Sequence[dict[str, Any]],
    out_png: str | Path,
    cols: int = 5,
) -> Path:
    """A figure of the query and its neighbours (label, cosine, pair probability under each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_path

    n = len(neighbours) + 1
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    panels = [(str(query_path), "query")] + [
        (
            nb["path"],
            f"{nb['label']}\ncos {nb['similarity']:.3f}  p {nb['pair_probability']:.3f}",
        )
        for nb in neighbours
    ]
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (path, title) in zip(axes.ravel(), panels, strict=False):
        try:
            ax.imshow(load_rgb(path))
        except DataError:
            ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png


def fewshot_eval(
    run: str | Path,
    data: str | Path,
    n_way: int,
    k_shots: Sequence[int],
    n_query: int,
    episodes: int,
    seed: int = 0,
    *,
    checkpoint: str = "best",
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Few-shot accuracy of the run's model on the classes of ``data`` (often unseen ones).

    ``{"n_way", "episodes", "results": {"siamese"|"prototype"|"nn1": {"<K>": {"mean", "ci95"}}},
    ...}``; each image is embedded once and reused by every episode and method.
    """
    loaded = load_run(run, checkpoint, device=device)
    samples = load_samples(data, classes)
    names = class_list(samples)
    lookup = {c: i for i, c in enumerate(names)}
    labels = [lookup[s.label] for s in samples]
    # check the request against the class sizes before embedding anything
    from .fewshot import EpisodeSampler

    for k in k_shots:
        EpisodeSampler(labels, n_way, k, n_query, episodes, seed, names)
    emb, timing = embed_paths(
        loaded.model, [s.path for s in samples], batch_size, num_workers, progress, desc="fewshot"
    )
    out = fewshot_evaluate(
        loaded.model, emb, labels, n_way, k_shots, n_query, episodes, seed, names
    )
    out.update(
        {
            "k_shots": [int(k) for k in k_shots],
            "run": str(loaded.run),
            "data": str(data),
            "num_images": len(samples),
            "classes": names,
            "embed_seconds": round(timing["total_s"], 3),
        }
    )
    return out


def retrieval_eval(
    bank: BankLike,
    data: str | Path,
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """precision@1, R-precision, MAP@R and recall@k of the images of ``data`` against the bank.

    An image that is itself an anchor is excluded from its own neighbours (so ``--data`` may be
    the bank's own data). Queries whose class is not in the bank are counted, not scored.
    """
    bank = open_bank(bank)
    samples = load_samples(data)
    paths = [str(Path(s.path).absolute()) for s in samples]
    emb, _ = embed_paths(bank.model, paths, batch_size, num_workers, progress, desc="retrieval")
    out = bank_retrieval(bank, emb, [s.label for s in samples], paths, ks)
    out["data"] = str(data)
    return out
