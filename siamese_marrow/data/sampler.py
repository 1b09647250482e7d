"""Balanced P x K batch sampler: every class, however rare, is seen.

Each batch holds P classes x K images. Classes are drawn without replacement within a batch with
probabilities ``uniform``, ``sqrt`` or ``frequency`` of class size; images of a class are drawn
without replacement, or with replacement when the class has fewer than K (a class with one image
then appears K times, and its augmented views form the positive pairs). The sampler needs only
labels. Batches are a function of ``(seed, epoch)``; with ``rank`` and ``world_size`` each rank
takes every ``world_size``-th batch of one global sequence, so the shares are disjoint and cover it.

Each yielded batch is a list of ``(index, item_seed)``: ``item_seed`` seeds that item's
augmentation, so a batch is reproduced exactly whatever the worker count or resume point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..config import SamplerConfig
from ..errors import ConfigError

WEIGHTINGS = ("uniform", "sqrt", "frequency")


class PKBatchSampler:
    """Yields ``batches_per_epoch`` batches of ``p * k`` ``(index, item_seed)`` pairs per epoch."""

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        batches_per_epoch: int = 0,
        weighting: str = "uniform",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        class_names: Sequence[str] | None = None,
    ) -> None:
        labels_arr = np.asarray(labels, dtype=np.int64)
        classes = np.unique(labels_arr)
        names = list(class_names) if class_names is not None else None
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"sampler.class_weighting={weighting!r} is not one of {WEIGHTINGS}")
        if p < 2:
            raise ConfigError(
                f"sampler.p_classes={p}: dissimilar pairs need at least 2 classes per batch"
            )
        if p > len(classes):
            raise ConfigError(
                f"sampler.p_classes={p} but the training data has only {len(classes)} classes; "
                f"set sampler.p_classes <= {len(classes)}"
            )
        if k < 1:
            raise ConfigError(f"sampler.k_per_class={k} must be >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} is not in [0, world_size={world_size})")
        self.p, self.k = p, k
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.classes = classes
        self.by_class = [np.flatnonzero(labels_arr == c) for c in classes]
        sizes = np.array([len(ix) for ix in self.by_class], dtype=np.float64)
        w = {"uniform": np.ones_like(sizes), "sqrt": np.sqrt(sizes), "frequency": sizes}[weighting]
        self.class_p = w / w.sum()
        self.singletons = [
            (names[int(c)] if names else str(int(c)))
            for c, ix in zip(classes, self.by_class, strict=True)
            if len(ix) == 1
        ]
        if batches_per_epoch <= 0:
            batches_per_epoch = max(1, int(np.ceil(len(labels_arr) / (p * k))))
        # a multiple of world_size batches in the global sequence: every rank gets as many
        self.global_batches = int(np.ceil(batches_per_epoch / world_size)) * world_size
        self.epoch = 0
        self.start_batch = 0

    @classmethod
    def from_config(
        cls,
        labels: Sequence[int],
        cfg: SamplerConfig,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> PKBatchSampler:
        """The sampler a config's ``sampler`` section describes."""
        return cls(
            labels,
            cfg.p_classes,
            cfg.k_per_class,
            cfg.batches_per_epoch,
            cfg.class_weighting,
            seed=seed,
            rank=rank,
            world_size=world_size,
            class_names=class_names,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its batches are a function of seed and epoch) and, for resuming,
        skip this rank's first ``start_batch`` batches."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.global_batches // self.world_size

    def global_batch(self, rng: np.random.Generator) -> np.ndarray:
        """One batch of dataset indices, ``(p * k,)``, class-major."""
        chosen = rng.choice(len(self.classes), size=self.p, replace=False, p=self.class_p)
        parts = []
        for c in chosen:
            ix = self.by_class[c]
            parts.append(rng.choice(ix, size=self.k, replace=len(ix) < self.k))
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ss = np.random.SeedSequence([self.seed, self.epoch])
        rng = np.random.default_rng(ss)
        item_seeds = np.random.default_rng(ss.spawn(1)[0]).integers(
            0, 2**62, size=(self.global_batches, self.p * self.k)
        )
        for b in range(self.global_batches):
            batch = self.global_batch(rng)  # always drawn, so every rank sees the same sequence
            mine = b % self.world_size == self.rank
            if mine and b // self.world_size >= self.start_batch:
                yield [(int(i), int(s)) for i, s in zip(batch, item_seeds[b], strict=True)]
