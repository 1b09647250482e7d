"""Benchmark the synthetic cell generator on one thread against the JPEG I/O floor.

Writes ``--n`` images per class for all 21 classes with ``write_dataset`` into a temporary
directory, and, in the same run, saves the same number of constant images of the same size with
Pillow alone (JPEG encode + save: the I/O floor). Disk speed varies, so the same comparison is
repeated in memory (render + encode to a buffer vs encode a constant image). Prints and
optionally saves JSON with the rates and their ratios (floor time / synth time).

    python tools/bench_synth.py --n 40 --size 128 --json bench_synth.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_marrow.data.classes import CLASS_CODES  # noqa: E402
from siamese_marrow.data.synth import (  # noqa: E402
    GENERATOR_VERSION,
    render_cell,
    write_dataset,
)


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    return "not pinned (no sched_setaffinity)"


def _io_floor(out: Path, n: int, size: int, quality: int) -> float:
    """Seconds to JPEG-encode and save ``n`` constant ``size x size`` images with Pillow."""
    img = Image.new("RGB", (size, size), (226, 214, 232))
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(n):
        tmp = out / f".c_{i:05d}.jpg.tmp"
        img.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, out / f"c_{i:05d}.jpg")
    return time.perf_counter() - t0


def _in_memory(codes: list[str], n: int, size: int, quality: int, seed: int) -> tuple[float, float]:
    """Seconds to render + JPEG-encode to memory, and to encode a constant image, ``n`` per code."""
    t0 = time.perf_counter()
    for code in codes:
        k = CLASS_CODES.index(code)
        for i in range(n):
            img = render_cell(
                code, np.random.default_rng(np.random.SeedSequence([seed, k, i])), size
            )
            img.save(io.BytesIO(), format="JPEG", quality=quality)
    t_synth = time.perf_counter() - t0
    const = Image.new("RGB", (size, size), (226, 214, 232))
    t0 = time.perf_counter()
    for _ in range(n * len(codes)):
        const.save(io.BytesIO(), format="JPEG", quality=quality)
    return t_synth, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="images per class (21 classes)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)

    pinned = _pin_one_core()
    counts = {c: args.n for c in CLASS_CODES}
    total = args.n * len(CLASS_CODES)
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        write_dataset(Path(tmp) / "warmup", {"NGS": 2}, size=args.size)  # caches, imports
        t0 = time.perf_counter()
        write_dataset(
            Path(tmp) / "synth", counts, seed=args.seed, size=args.size, quality=args.quality
        )
        t_synth = time.perf_counter() - t0
        t_floor = _io_floor(Path(tmp) / "floor", total, args.size, args.quality)
    t_mem, t_mem_floor = _in_memory(list(CLASS_CODES), args.n, args.size, args.quality, args.seed)
    result: dict[str, object] = {
        "benchmark": "synth_write_dataset",
        "generator_version": GENERATOR_VERSION,
        "images": total,
        "size": args.size,
        "quality": args.quality,
        "threads": 1,
        "pinned": pinned,
        "synth_images_per_s": round(total / t_synth, 1),
        "synth_ms_per_image": round(1000 * t_synth / total, 3),
        "io_floor_images_per_s": round(total / t_floor, 1),
        "ratio_synth_to_io_floor": round(t_floor / t_synth, 4),
        "render_encode_in_memory_images_per_s": round(total / t_mem, 1),
        "encode_floor_in_memory_images_per_s": round(total / t_mem_floor, 1),
        "ratio_in_memory": round(t_mem_floor / t_mem, 4),
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
