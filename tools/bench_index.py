"""Benchmark FAISS index types for the anchor bank against exact search and scikit-learn.

Seeded unit vectors (clustered around ``--clusters`` centres so they look like embeddings of 21
cell classes) at each of ``--dims``; for each index type: build time (training + adding), index
size in bytes (the file ``FaissIndex.save`` writes), batch query time (``--queries`` at once),
single-query latency (median over ``--single`` one-vector searches), and recall@k against exact
search. scikit-learn's brute-force ``NearestNeighbors(metric="cosine")`` on the same data is the
baseline; ``sklearn_ratio`` = sklearn batch time / exact FAISS (Flat) batch time, measured in the
same run. Prints a table and optionally writes JSON.

    python tools/bench_index.py --n 171000 --dims 512,2048 --json bench_index.json
    python tools/bench_index.py --n 20000 --dims 512 --threads 2          # a quick run
    python tools/bench_index.py --n 1000000 --threads 1                   # a large bank, dim 256

Anchors get labels drawn with the class proportions of the Matek data (``--imbalance matek``:
8 to 29,424 images per class, 1:3,700) or uniformly. Every index is also run through the bank's
class-balanced shortlist (:class:`siamese_marrow.index.shortlist.Shortlist`), and the top class of
a model-free consensus (each class scored by the mean cosine of its ``--per-class-k`` nearest
anchors) is compared with the same consensus over all anchors by exact search
(``top_class_agreement``); ``shortlist_ms`` is the top-M search plus the shortlist, and
``shortlist_searched`` how many (query, big class) pairs it searched precisely and cheaply.
``auto`` is the index ``bank.index=auto`` chooses for ``--budget``,
tuned to ``--target-recall`` as a bank does; ``rss_mib`` is the resident memory the index (and,
for auto, the float16 embeddings a bank stores) added to the process.

IVF indexes are trained on a seeded sample of ``--train-per-list`` vectors per list (FAISS itself
would use up to 256 per list); ``nlist`` defaults to 1024, lowered for small ``--n`` so every list
gets at least 39 training vectors.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from siamese_marrow.config import BankConfig
from siamese_marrow.index.auto import auto_nlist as package_nlist
from siamese_marrow.index.auto import build_index, choose_index, embedding_dtype, tune
from siamese_marrow.index.faiss_index import FaissIndex, set_num_threads
from siamese_marrow.index.shortlist import Shortlist, class_members, cosines

#: images per class in the Matek 2021 data (DESIGN.md), for --imbalance matek
MATEK = [8, 19630, 441, 11973, 27395, 5883, 47, 409, 42, 65, 26242, 3055, 4040, 6557, 9968]
MATEK += [29424, 3538, 294, 2740, 7629, 11994]


def make_data(
    n: int,
    dim: int,
    clusters: int,
    spread: float,
    intrinsic: int,
    noise: float,
    seed: int,
    stream: int = 0,
    weights: list[float] | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors that look like embeddings: ``clusters`` random centres
    (0 = none), plus within-class variation of ``intrinsic`` dimensions (a random linear map of a
    Gaussian; 0 = full rank) scaled by ``spread``, plus isotropic ``noise``. Vectors drawn with
    the same ``seed`` and ``dim`` share centres and map; ``stream`` 0 = anchors, 1 = queries."""
    rng = np.random.default_rng([seed, dim])
    centres = rng.standard_normal((max(clusters, 1), dim), dtype=np.float32)
    if clusters == 0:
        centres[:] = 0
    w = rng.standard_normal((intrinsic, dim), dtype=np.float32) if intrinsic > 0 else None
    draw = np.random.default_rng([seed, dim, stream + 1])
    if w is not None:
        x = draw.standard_normal((n, intrinsic), dtype=np.float32) @ w
        x *= spread
        x += noise * draw.standard_normal((n, dim), dtype=np.float32)
    else:
        x = spread * draw.standard_normal((n, dim), dtype=np.float32)
    x += centres[labels_for(n, len(centres), weights, draw) if labels is None else labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def labels_for(
    n: int, classes: int, weights: list[float] | None, draw: np.random.Generator
) -> np.ndarray:
    """``(n,)`` class of each vector: uniform, or in proportion to ``weights``."""
    if not weights:
        return draw.integers(0, classes, n)
    p = np.asarray(weights[:classes], dtype=np.float64)
    return draw.choice(classes, n, p=p / p.sum())


def consensus_top(
    q: np.ndarray, x: np.ndarray, labels: np.ndarray, rows: np.ndarray, classes: int, k: int
) -> np.ndarray:
    """Top class of each query by the mean cosine of each class's (up to) ``k`` best candidates
    among ``rows (B, K)`` (-1 = padding)."""
    cos = cosines(q, x, rows)
    lab = np.where(rows >= 0, labels[rows.clip(0)], -1)
    score = np.full((len(q), classes), -np.inf)
    for c in range(classes):
        s = np.where(lab == c, cos, -np.inf)
        top = -np.sort(-s, axis=1)[:, :k]
        ok = np.isfinite(top)
        score[:, c] = np.where(ok.any(1), np.where(ok, top, 0).sum(1) / ok.sum(1).clip(1), -np.inf)
    return score.argmax(1)


def exact_consensus_top(q: np.ndarray, x: np.ndarray, members: list, k: int) -> np.ndarray:
    """The same consensus over every anchor (each class's exact ``k`` nearest)."""
    score = np.full((len(q), len(members)), -np.inf)
    for c, rows in enumerate(members):
        if len(rows):
            s = q @ np.asarray(x[rows], dtype=np.float32).T
            kk = min(k, len(rows))
            score[:, c] = np.partition(-s, kk - 1, axis=1)[:, :kk].mean(1) * -1
    return score.argmax(1)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def default_factories(n: int, dim: int, nlist: int) -> list[str]:
    m = 64 if dim >= 2048 else 32
    if n > 200_000:  # HNSW takes too long to build on a few cores at this size
        return ["Flat", f"IVF{nlist},Flat", f"IVF{nlist},SQfp16", f"OPQ{m},IVF{nlist},PQ{m}"]
    return ["Flat", "HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},PQ{m}"]


def auto_nlist(n: int, requested: int) -> int:
    nlist = requested
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = [len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def single_latency_ms(search, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(
    index: FaissIndex,
    method: str,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray | None,
    ctx: dict[str, Any],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], np.ndarray]:
    """Batch and single-query latency, recall@k and the consensus agreement of ``index``."""
    index.search(q[:8], args.k)  # warm-up
    t = time.perf_counter()
    _, ids = index.search(q, args.k)
    t_batch = time.perf_counter() - t
    single = single_latency_ms(lambda v: index.search(v, args.k), q[: args.single])
    row: dict[str, Any] = {
        "method": method,
        "factory": index.factory,
        "batch_ms": round(t_batch * 1000, 2),
        "batch_ms_per_query": round(t_batch * 1000 / len(q), 4),
        "single_ms": round(single, 3),
        "recall_at_k": 1.0 if truth is None else round(recall_at(ids, truth), 4),
        "params": index.search_params,
    }
    if ctx.get("exact_top") is not None:
        sl = Shortlist(index, x, ctx["labels"], ctx["ids"], ctx["classes"], args.per_class_k)
        t = time.perf_counter()
        _, top_ids = index.search(q, args.top_m)
        rows = sl.candidates(q, np.where(top_ids >= 0, top_ids, -1))
        row["shortlist_ms"] = round((time.perf_counter() - t) * 1000, 2)
        row["shortlist_searched"] = dict(sl.searched)  # big-class query pairs, by precision
        top = consensus_top(q, x, ctx["labels"], rows, ctx["classes"], args.per_class_k)
        row["top_class_agreement"] = round(float((top == ctx["exact_top"]).mean()), 4)
    return row, ids


def bench_faiss(
    factory: str,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray | None,
    args: argparse.Namespace,
    tmp: Path,
    ctx: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One row per search setting (each ``--nprobe`` for IVF, each ``--ef-search`` for HNSW)."""
    dim = x.shape[1]
    ctx = ctx or {}
    rss0 = current_rss_mb()
    index = FaissIndex(dim, factory)
    t0 = time.perf_counter()
    if index.kind == "ivf":
        nlist = index.nlist
        size = min(len(x), max(args.train_per_list * nlist, 256 * ("PQ" in factory)))
        sample = np.random.default_rng(args.seed).choice(len(x), size, replace=False)
        index.train(x[np.sort(sample)])
    t_train = time.perf_counter() - t0
    index.add(x, ctx.get("ids"))
    t_build = time.perf_counter() - t0
    rss = current_rss_mb() - rss0
    path = tmp / "bench.faiss"
    index.save(path)
    nbytes = path.stat().st_size
    path.unlink()
    if index.kind == "ivf":
        settings = [("nprobe", int(v)) for v in args.nprobe.split(",")]
    elif index.kind == "hnsw":
        settings = [("efSearch", int(v)) for v in args.ef_search.split(",")]
    else:
        settings = [("", 0)]
    rows = []
    for name, value in settings:
        if name:
            setattr(index, name, value)
        label = f"{factory} {name}={value}" if name else factory
        row, ids = measure(index, label, x, q, truth, ctx, args)
        row.update(
            build_s=round(t_build, 3), train_s=round(t_train, 3), bytes=int(nbytes), rss_mib=rss
        )
        rows.append(row)
    del index
    return rows, ids


def bench_auto(
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    tmp: Path,
    ctx: dict[str, Any],
) -> dict[str, Any]:
    """The index a bank with ``bank.index=auto`` gets: chosen, built over the embeddings as the
    bank stores them (float16 when large), tuned to the recall target, then measured."""
    cfg = BankConfig(memory_budget=args.budget, target_recall=args.target_recall)
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    choice = choose_index(len(x), x.shape[1], cfg)
    stored = np.asarray(x, dtype=embedding_dtype(len(x), cfg.embeddings))
    index = build_index(choice.factory, stored, ctx["ids"], seed=args.seed)
    t_build = time.perf_counter() - t0
    params, tuned_recall, tuned_on = tune(index, stored, ctx["ids"], cfg.target_recall)
    t_tune = time.perf_counter() - t0 - t_build
    rss = current_rss_mb() - rss0
    row, _ = measure(index, f"auto -> {choice.factory}", stored, q, truth, ctx, args)
    path = tmp / "bench.faiss"
    index.save(path)
    row.update(
        build_s=round(t_build, 3),
        train_s=0.0,
        tune_s=round(t_tune, 3),
        bytes=int(path.stat().st_size),
        rss_mib=round(rss, 1),
        estimated_bytes=choice.total_bytes,
        budget=args.budget,
        reason=choice.reason,
        tuned_recall=tuned_recall,
        tuned_on=tuned_on,
        embeddings_dtype=str(stored.dtype),
    )
    path.unlink()
    return row


def bench_sklearn(x: np.ndarray, q: np.ndarray, truth: np.ndarray, args) -> dict[str, Any]:
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="cosine", n_jobs=1).fit(x)
    t_build = time.perf_counter() - t0
    nn.kneighbors(q[:8])
    t = time.perf_counter()
    _, ids = nn.kneighbors(q)
    t_batch = time.perf_counter() - t
    single = single_latency_ms(lambda v: nn.kneighbors(v), q[: args.single])
    return {
        "method": "sklearn brute cosine",
        "build_s": round(t_build, 3),
        "train_s": 0.0,
        "bytes": int(x.nbytes),
        "batch_ms": round(t_batch * 1000, 2),
        "batch_ms_per_query": round(t_batch * 1000 / len(q), 4),
        "single_ms": round(single, 3),
        "recall_at_k": round(recall_at(ids, truth), 4),
        "params": {},
    }


def print_table(dim: int, n: int, rows: list[dict[str, Any]], k: int) -> None:
    print(f"\n# n={n:,} dim={dim}")
    head = (
        f"{'method':<28}{'build s':>9}{'train s':>9}{'MiB':>9}{'batch ms':>10}"
        f"{'ms/q':>8}{'1-q ms':>9}{f'recall@{k}':>11}{'agree':>8}{'RSS MiB':>9}{'short ms':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['method']:<28}{r['build_s']:>9.2f}{r['train_s']:>9.2f}"
            f"{r['bytes'] / 2**20:>9.1f}{r['batch_ms']:>10.1f}{r['batch_ms_per_query']:>8.3f}"
            f"{r['single_ms']:>9.3f}{r['recall_at_k']:>11.4f}"
            f"{r.get('top_class_agreement', float('nan')):>8.4f}{r.get('rss_mib', 0):>9.0f}"
            f"{r.get('shortlist_ms', float('nan')):>10.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=171_000, help="anchors (default 171,000)")
    p.add_argument(
        "--dims", help="comma-separated dimensions (default 512,2048; 256 from 500,000 anchors)"
    )
    p.add_argument("--queries", type=int, default=256, help="queries in the batch")
    p.add_argument("--single", type=int, default=50, help="single-vector searches timed")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--factories", help="comma-free list separated by ';' (default: per dim)")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0 = as auto: ~4 sqrt(n))")
    p.add_argument("--nprobe", default="16,64", help="IVF lists visited (comma-separated)")
    p.add_argument("--ef-search", default="64", help="HNSW search breadth (comma-separated)")
    p.add_argument("--train-per-list", type=int, default=39)
    p.add_argument("--clusters", type=int, default=21, help="0 = uniform random directions")
    p.add_argument("--spread", type=float, default=1.0, help="within-class spread")
    p.add_argument("--intrinsic", type=int, default=32, help="within-class dims (0 = full rank)")
    p.add_argument("--noise", type=float, default=0.1, help="isotropic noise")
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = default)")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imbalance", default="matek", choices=["matek", "uniform"])
    p.add_argument("--budget", default="2GB", help="bank.memory_budget for auto")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--top-m", type=int, default=64, help="bank.top_m of the shortlist")
    p.add_argument("--per-class-k", type=int, default=5, help="bank.per_class_k")
    p.add_argument("--no-auto", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    set_num_threads(args.threads)
    args.dims = args.dims or ("256" if args.n >= 500_000 else "512,2048")
    results: dict[str, Any] = {
        "n": args.n,
        "queries": args.queries,
        "k": args.k,
        "seed": args.seed,
        "clusters": args.clusters,
        "spread": args.spread,
        "intrinsic": args.intrinsic,
        "noise": args.noise,
        "imbalance": args.imbalance,
        "budget": args.budget,
        "target_recall": args.target_recall,
        "top_m": args.top_m,
        "per_class_k": args.per_class_k,
        "command": "python tools/bench_index.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "threads": args.threads,
        "dims": {},
    }
    nlist = auto_nlist(args.n, args.nlist) if args.nlist else package_nlist(args.n)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for dim in [int(d) for d in args.dims.split(",") if d]:
            gen = (args.clusters, args.spread, args.intrinsic, args.noise, args.seed)
            weights = MATEK if args.imbalance == "matek" else None
            classes = max(args.clusters, 1)
            draw = np.random.default_rng([args.seed, dim, 99])
            labels = labels_for(args.n, classes, weights, draw)
            x = make_data(args.n, dim, *gen, labels=labels)
            q = make_data(args.queries, dim, *gen, stream=1, weights=weights)
            members = class_members(labels, classes)
            t = time.perf_counter()
            exact_top = exact_consensus_top(q, x, members, args.per_class_k)
            results.setdefault("exact_consensus_s", {})[str(dim)] = round(
                time.perf_counter() - t, 3
            )
            ids = np.arange(args.n, dtype=np.int64)
            ctx = {"labels": labels, "ids": ids, "classes": classes, "exact_top": exact_top}
            factories = args.factories.split(";") if args.factories else None
            factories = factories or default_factories(args.n, dim, nlist)
            if "Flat" in factories:
                factories.remove("Flat")
            rows = []
            (flat,), truth = bench_faiss("Flat", x, q, None, args, tmp, ctx)
            rows.append(flat)
            for f in factories:
                more, _ = bench_faiss(f, x, q, truth, args, tmp, ctx)
                rows.extend(more)
                print(f"  {f}: done ({more[0]['build_s']:.1f} s build)", flush=True)
            if not args.no_auto:
                auto = bench_auto(x, q, truth, args, tmp, ctx)
                auto["speedup_vs_flat_batch"] = round(flat["batch_ms"] / auto["batch_ms"], 1)
                rows.append(auto)
                print(f"  auto: {auto['method']} ({auto['build_s']:.1f} s build)", flush=True)
            if not args.no_sklearn:
                sk = bench_sklearn(x, q, truth, args)
                sk["ratio_vs_flat_batch"] = round(sk["batch_ms"] / flat["batch_ms"], 2)
                sk["ratio_vs_flat_single"] = round(sk["single_ms"] / flat["single_ms"], 2)
                rows.append(sk)
            print_table(dim, args.n, rows, args.k)
            if not args.no_sklearn:
                print(
                    f"sklearn / exact FAISS: batch x{rows[-1]['ratio_vs_flat_batch']}, "
                    f"single query x{rows[-1]['ratio_vs_flat_single']}"
                )
            results["dims"][str(dim)] = rows
            del x
    results["max_rss_mb"] = round(rss_mb(), 1)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
