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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from siamese_marrow.index.faiss_index import FaissIndex, set_num_threads


def make_data(
    n: int,
    dim: int,
    clusters: int,
    spread: float,
    intrinsic: int,
    noise: float,
    seed: int,
    stream: int = 0,
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
    x += centres[draw.integers(0, len(centres), n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def default_factories(n: int, dim: int, nlist: int) -> list[str]:
    m = 64 if dim >= 2048 else 32
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


def bench_faiss(
    factory: str,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray | None,
    args: argparse.Namespace,
    tmp: Path,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One row per search setting (each ``--nprobe`` for IVF, each ``--ef-search`` for HNSW)."""
    dim = x.shape[1]
    index = FaissIndex(dim, factory)
    t0 = time.perf_counter()
    if factory.startswith("IVF"):
        nlist = int(factory[3:].split(",")[0])
        size = min(len(x), max(args.train_per_list * nlist, 256 * ("PQ" in factory)))
        sample = np.random.default_rng(args.seed).choice(len(x), size, replace=False)
        index.train(x[np.sort(sample)])
    t_train = time.perf_counter() - t0
    index.add(x)
    t_build = time.perf_counter() - t0
    path = tmp / "bench.faiss"
    index.save(path)
    nbytes = path.stat().st_size
    path.unlink()
    if factory.startswith("IVF"):
        settings = [("nprobe", int(v)) for v in args.nprobe.split(",")]
    elif factory.startswith("HNSW"):
        settings = [("efSearch", int(v)) for v in args.ef_search.split(",")]
    else:
        settings = [("", 0)]
    rows = []
    for name, value in settings:
        if name:
            setattr(index, name, value)
        index.search(q[:8], args.k)  # warm-up
        t = time.perf_counter()
        _, ids = index.search(q, args.k)
        t_batch = time.perf_counter() - t
        single = single_latency_ms(lambda v: index.search(v, args.k), q[: args.single])
        rows.append(
            {
                "method": f"{factory} {name}={value}" if name else factory,
                "factory": factory,
                "build_s": round(t_build, 3),
                "train_s": round(t_train, 3),
                "bytes": int(nbytes),
                "batch_ms": round(t_batch * 1000, 2),
                "batch_ms_per_query": round(t_batch * 1000 / len(q), 4),
                "single_ms": round(single, 3),
                "recall_at_k": 1.0 if truth is None else round(recall_at(ids, truth), 4),
                "params": {name: value} if name else {},
            }
        )
    return rows, ids


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
        f"{'ms/q':>8}{'1-q ms':>9}{f'recall@{k}':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['method']:<28}{r['build_s']:>9.2f}{r['train_s']:>9.2f}"
            f"{r['bytes'] / 2**20:>9.1f}{r['batch_ms']:>10.1f}{r['batch_ms_per_query']:>8.3f}"
            f"{r['single_ms']:>9.3f}{r['recall_at_k']:>11.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=171_000, help="anchors (default 171,000)")
    p.add_argument("--dims", default="512,2048", help="comma-separated dimensions")
    p.add_argument("--queries", type=int, default=256, help="queries in the batch")
    p.add_argument("--single", type=int, default=50, help="single-vector searches timed")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--factories", help="comma-free list separated by ';' (default: per dim)")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists (lowered for small n)")
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
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    set_num_threads(args.threads)
    results: dict[str, Any] = {
        "n": args.n,
        "queries": args.queries,
        "k": args.k,
        "seed": args.seed,
        "clusters": args.clusters,
        "spread": args.spread,
        "intrinsic": args.intrinsic,
        "noise": args.noise,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "threads": args.threads,
        "dims": {},
    }
    nlist = auto_nlist(args.n, args.nlist)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for dim in [int(d) for d in args.dims.split(",") if d]:
            gen = (args.clusters, args.spread, args.intrinsic, args.noise, args.seed)
            x = make_data(args.n, dim, *gen)
            q = make_data(args.queries, dim, *gen, stream=1)
            factories = args.factories.split(";") if args.factories else None
            factories = factories or default_factories(args.n, dim, nlist)
            if "Flat" in factories:
                factories.remove("Flat")
            rows = []
            (flat,), truth = bench_faiss("Flat", x, q, None, args, tmp)
            rows.append(flat)
            for f in factories:
                more, _ = bench_faiss(f, x, q, truth, args, tmp)
                rows.extend(more)
                print(f"  {f}: done ({more[0]['build_s']:.1f} s build)", flush=True)
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
