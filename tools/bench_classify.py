"""Where consensus classification spends its time: backbone forward vs search + heads + consensus.

Builds an anchor bank of a run's model on --data (or reuses --bank), then classifies a batch of
query images several times. The baseline, in the same run, is the backbone forward pass alone on
the same images; the share outside it (FAISS search, exact per-class neighbours, pair heads,
consensus) is what the bank adds.

    python tools/bench_classify.py --run runs/bm7 --data ../shared/data/bm7 --queries 256 \
        --repeats 3 --threads 2 --json runs/bench_classify.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from siamese_marrow.data.datasets import load_samples
from siamese_marrow.index import AnchorBank, classify
from siamese_marrow.models.checkpoint import load_run
from siamese_marrow.models.embed import embed_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, help="anchors (all images) and queries (a subset)")
    ap.add_argument("--bank", help="reuse this bank instead of building one from --data")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", default=None, help="FAISS factory string (default: the run's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_run(args.run)
    samples = load_samples(args.data)
    t = time.perf_counter()
    if args.bank:
        bank = AnchorBank.load(args.bank, loaded)
    else:
        bank = AnchorBank.build(loaded, samples, batch_size=args.batch_size, factory=args.index)
    build_s = time.perf_counter() - t
    step = max(1, len(samples) // args.queries)
    paths = [s.path for s in samples[::step]][: args.queries]

    rows = []
    for _ in range(args.repeats):
        emb, t_embed = embed_paths(bank.model, paths, args.batch_size)
        t0 = time.perf_counter()
        result = classify(bank, emb)
        bank_s = time.perf_counter() - t0
        rows.append(
            {
                "load_s": t_embed["load_s"],
                "backbone_s": t_embed["backbone_s"],
                "search_s": result.timing["search_s"],
                "heads_s": result.timing["heads_s"],
                "bank_s": bank_s,
            }
        )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    compute = med["backbone_s"] + med["bank_s"]
    result = {
        "run": args.run,
        "anchors": len(bank),
        "classes": len(bank.classes),
        "index": bank.factory,
        "top_m": bank.bank_config.top_m,
        "per_class_k": bank.bank_config.per_class_k,
        "queries": len(paths),
        "threads": args.threads,
        "bank_build_s": round(build_s, 2),
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "share_outside_backbone_of_compute": round(med["bank_s"] / compute, 4),
        "share_outside_backbone_incl_decode": round(
            (med["bank_s"] + med["load_s"]) / (compute + med["load_s"]), 4
        ),
        "ratio_total_to_backbone_only": round(compute / med["backbone_s"], 4),
        "repeats": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "repeats"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
