"""Stratified splits by seed; grouped (no group in two splits) when samples carry a group."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .datasets import Sample


def _stratified_holdout(
    samples: Sequence[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Per class, hold out round(n * fraction) images (at least 1 when n >= 2 and fraction > 0).

    A class with a single image stays in the first part: it cannot be in both.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.label].append(i)
    keep: list[int] = []
    held: list[int] = []
    for label in sorted(by_class):
        idx = np.array(by_class[label])
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.extend(idx[:n_held].tolist())
        keep.extend(idx[n_held:].tolist())
    return sorted(keep), sorted(held)


def _grouped_holdout(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out about ``fraction`` of the images by whole groups, stratified by class."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [s.group for s in samples]
    n_groups = len(set(groups))
    n_splits = max(2, int(round(1.0 / fraction)))
    if n_groups < n_splits:
        raise DataError(
            f"a grouped split holding out {fraction:.0%} needs at least {n_splits} groups; "
            f"the data has {n_groups}"
        )
    labels = [s.label for s in samples]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, held = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return sorted(keep.tolist()), sorted(held.tolist())


def split_samples(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[Sample]]:
    """Split into ``train``, ``val`` and ``test`` (empty when its fraction is 0).

    Stratified by class. When every sample has a group, the split is grouped: no group appears in
    two splits. When only some samples have one, the request is refused (ambiguous).
    """
    has_group = [s.group is not None for s in samples]
    grouped = all(has_group)
    if any(has_group) and not grouped:
        n = sum(not g for g in has_group)
        raise DataError(
            f"{n} of {len(samples)} samples have no group; give every row a group or none"
        )
    rng = np.random.default_rng(seed)
    rest = list(range(len(samples)))
    out: dict[str, list[int]] = {"test": [], "val": []}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction <= 0:
            continue
        # fraction of the whole data, applied to what is left
        f = fraction / (len(rest) / len(samples))
        sub = [samples[i] for i in rest]
        keep, held = (
            _grouped_holdout(sub, f, seed + (name == "val"))
            if grouped
            else _stratified_holdout(sub, f, rng)
        )
        out[name] = [rest[i] for i in held]
        rest = [rest[i] for i in keep]
    return {
        "train": [samples[i] for i in rest],
        "val": [samples[i] for i in out["val"]],
        "test": [samples[i] for i in out["test"]],
    }
