"""Writing a synthetic ImageFolder dataset to disk (``write_dataset``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...utils import atomic_path, atomic_write_json
from ..classes import CLASS_CODES
from .profiles import _check_codes
from .render import GENERATOR_VERSION, render_cell


def write_dataset(
    out: str | os.PathLike,
    counts: Mapping[str, int],
    seed: int = 0,
    size: int = 128,
    quality: int = 90,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic ImageFolder dataset: ``out/<CODE>/<CODE>_00000.jpg`` ...

    Image ``i`` of class ``code`` depends only on ``(seed, code, i, size)``. Files are written
    to a temporary name, fsynced and renamed into place (``utils.atomic_path``); nothing in
    ``out`` is deleted except the files being overwritten. ``out/synth.json`` records the seed,
    size, quality, counts and ``GENERATOR_VERSION``. Classes with a count of 0 get no folder.

    Returns:
        ``{code: images written}``.
    """
    _check_codes(list(counts))
    bad = {c: n for c, n in counts.items() if int(n) != n or n < 0}
    if bad:
        raise ConfigError(f"counts must be non-negative integers, got {bad}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for code, n in counts.items():
        n, k = int(n), CLASS_CODES.index(code)
        written[code] = 0
        if n == 0:
            continue
        folder = root / code
        folder.mkdir(exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, k, i]))
            img = render_cell(code, rng, size)
            with atomic_path(folder / f"{code}_{i:05d}.jpg") as tmp:
                img.save(tmp, format="JPEG", quality=quality)
            written[code] += 1
        if progress:
            print(f"synth: {code} {n} images", file=sys.stderr, flush=True)
    meta = {
        "generator": "siamese_marrow.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "quality": quality,
        "counts": written,
    }
    atomic_write_json(root / "synth.json", meta)
    return written
