"""A fast validation pass over every image before long work starts."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError, ImageDecodeError
from .datasets import Sample, load_samples
from .io import load_rgb


@dataclass(frozen=True)
class BadImage:
    path: str
    problem: str


def _check_one(path: str) -> str | None:
    try:
        load_rgb(path)
    except ImageDecodeError as e:
        return e.problem
    return None


def find_bad_images(
    samples: Sequence[Sample], workers: int = 0, progress: bool = False
) -> list[BadImage]:
    """Decode every image fully (in ``workers`` processes; 0 = here) and list the bad ones."""
    paths = [s.path for s in samples]
    if workers > 0 and len(paths) > 256:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(
                tqdm(
                    pool.map(_check_one, paths, chunksize=64),
                    total=len(paths),
                    desc="check images",
                    disable=not progress,
                )
            )
    else:
        results = [_check_one(p) for p in tqdm(paths, desc="check images", disable=not progress)]
    return [BadImage(p, r) for p, r in zip(paths, results, strict=True) if r is not None]


def describe_bad(bad: Sequence[BadImage], shown: int = 10) -> str:
    lines = [f"  {b.path}: {b.problem}" for b in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"  ... and {len(bad) - shown} more")
    return "\n".join(lines)


def validate_samples(
    samples: Sequence[Sample], skip_bad: bool, workers: int | None = None, progress: bool = False
) -> tuple[list[Sample], list[BadImage]]:
    """Stop with a message naming the bad files, or drop them when ``skip_bad``."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(samples) > 2000 else 0
    bad = find_bad_images(samples, workers, progress)
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} of {len(samples)} images cannot be used:\n{describe_bad(bad)}\n"
            "fix or remove them, or pass --skip-bad (data.skip_bad=true) to skip and list them"
        )
    bad_paths = {b.path for b in bad}
    return [s for s in samples if s.path not in bad_paths], bad


def check_data(
    data: str | os.PathLike, workers: int | None = None, progress: bool = True
) -> tuple[dict[str, Any], list[BadImage]]:
    """Decode every image of ``data`` (folder or CSV) once: a JSON-able report (images, bad files,
    images per class, single-image classes) and the bad images. ``workers`` default: up to 4."""
    samples = load_samples(data)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bad = find_bad_images(samples, workers=workers, progress=progress)
    counts = Counter(s.label for s in samples)
    report = {
        "data": str(data),
        "images": len(samples),
        "bad": [b.__dict__ for b in bad],
        "classes": dict(sorted(counts.items())),
        "single_image_classes": sorted(c for c, n in counts.items() if n == 1),
    }
    return report, bad
