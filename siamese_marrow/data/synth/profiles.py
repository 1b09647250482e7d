"""Class-code checks and the number of images per class (``profile_counts``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError, DataError
from ..classes import CLASS_CODES, MATEK_CLASSES


def _check_codes(codes: Sequence[str]) -> None:
    bad = [c for c in codes if c not in MATEK_CLASSES]
    if bad:
        raise DataError(
            f"unknown class code(s) {', '.join(map(repr, bad))}; "
            f"valid codes are {', '.join(CLASS_CODES)}"
        )


def profile_counts(
    profile: str,
    total: int | None = None,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    min_per_class: int = 2,
) -> dict[str, int]:
    """Images per class for a synthetic dataset.

    Args:
        profile: ``"uniform"``: ``per_class`` images each (or ``total`` split evenly);
            ``"matek"``: proportional to the real counts in ``MATEK_CLASSES``, scaled so that
            the counts sum to ``total`` or, without ``total``, so that the largest class gets
            ``per_class`` (default 200); every class gets at least ``min_per_class``.
        total: the exact sum of the counts; give ``total`` or ``per_class``, not both.
        per_class: images per class (uniform) or of the largest class (matek).
        classes: the class codes to include (default all of ``CLASS_CODES``), in that order.
        min_per_class: floor for every class in the matek profile.

    Returns:
        ``{code: count}`` in the order of ``classes``.
    """
    codes = list(CLASS_CODES if classes is None else classes)
    _check_codes(codes)
    if not codes or len(set(codes)) != len(codes):
        raise ConfigError(f"classes must be non-empty and without repeats, got {codes}")
    if total is not None and per_class is not None:
        raise ConfigError(
            f"give total or per_class, not both (total={total}, per_class={per_class})"
        )
    for name, val in (("total", total), ("per_class", per_class), ("min_per_class", min_per_class)):
        if val is not None and val < 0:
            raise ConfigError(f"{name} must be >= 0, got {val}")
    if profile == "uniform":
        if total is None:
            return {c: 200 if per_class is None else per_class for c in codes}
        q, r = divmod(total, len(codes))
        return {c: q + (j < r) for j, c in enumerate(codes)}
    if profile != "matek":
        raise ConfigError(f"unknown profile {profile!r}; valid profiles are 'uniform', 'matek'")
    real = np.array([MATEK_CLASSES[c][1] for c in codes], np.float64)
    if total is None:
        top = 200 if per_class is None else per_class
        out = np.maximum(np.rint(real * (top / real.max())).astype(np.int64), min_per_class)
        return {c: int(n) for c, n in zip(codes, out, strict=True)}
    if total < min_per_class * len(codes):
        raise ConfigError(
            f"total {total} is below min_per_class {min_per_class} x "
            f"{len(codes)} classes = {min_per_class * len(codes)}"
        )
    floored = np.zeros(len(codes), bool)  # water-filling: classes held at the floor
    while True:
        left = total - min_per_class * floored.sum()
        quota = np.where(floored, min_per_class, real * left / real[~floored].sum())
        low = ~floored & (quota < min_per_class)
        if not low.any():
            break
        floored |= low
    base = np.floor(quota).astype(np.int64)
    extra = total - base.sum()  # largest remainder; ties go to the class with more real images
    order = np.lexsort((-real, -(quota - base)))
    base[order[:extra]] += 1
    return {c: int(n) for c, n in zip(codes, base, strict=True)}
