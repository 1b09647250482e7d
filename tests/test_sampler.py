"""The balanced P x K sampler and in-batch pairs, checked by counting labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from siamese_marrow.data.pairs import balanced_pairs
from siamese_marrow.data.sampler import PKBatchSampler
from siamese_marrow.errors import ConfigError

# imbalanced like the real data: one class of 1 image, one of 3, one of 200
LABELS = [0] * 200 + [1] * 40 + [2] * 3 + [3] * 1 + [4] * 60


def _batches(s: PKBatchSampler) -> list[list[int]]:
    return [[i for i, _ in b] for b in s]


def test_every_batch_is_p_classes_by_k_images() -> None:
    s = PKBatchSampler(LABELS, p=3, k=4, batches_per_epoch=50, seed=0)
    labels = np.array(LABELS)
    for batch in _batches(s):
        counts = Counter(labels[batch].tolist())
        assert len(batch) == 12
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_uniform_weighting_sees_rare_classes_as_often_as_common() -> None:
    s = PKBatchSampler(LABELS, p=2, k=2, batches_per_epoch=2000, seed=1)
    labels = np.array(LABELS)
    seen = Counter()
    for batch in _batches(s):
        seen.update(set(labels[batch].tolist()))
    # each class appears in about 2/5 of 2000 batches = 800
    assert all(700 < seen[c] < 900 for c in range(5)), seen


def test_frequency_weighting_follows_class_size() -> None:
    s = PKBatchSampler(LABELS, p=2, k=2, batches_per_epoch=2000, weighting="frequency", seed=1)
    labels = np.array(LABELS)
    seen = Counter()
    for batch in _batches(s):
        seen.update(set(labels[batch].tolist()))
    assert seen[0] > seen[4] > seen[1] > seen[2] >= seen[3]


def test_short_class_sampled_with_replacement_long_class_without() -> None:
    s = PKBatchSampler(LABELS, p=5, k=4, batches_per_epoch=20, seed=2)
    labels = np.array(LABELS)
    for batch in _batches(s):
        by = {}
        for i in batch:
            by.setdefault(labels[i], []).append(i)
        assert by[3] == [243] * 4  # the single image, four times (four augmented views)
        assert len(set(by[0])) == 4  # no repeats where the class has enough images


def test_deterministic_for_seed_and_epoch() -> None:
    a = PKBatchSampler(LABELS, p=3, k=2, batches_per_epoch=10, seed=5)
    b = PKBatchSampler(LABELS, p=3, k=2, batches_per_epoch=10, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    # resuming inside an epoch yields exactly the remaining batches
    b.set_epoch(3, start_batch=6)
    assert list(b) == list(a)[6:]


def test_rank_shares_are_disjoint_and_cover_the_global_sequence() -> None:
    full = PKBatchSampler(LABELS, p=3, k=2, batches_per_epoch=12, seed=9)
    shares = [
        PKBatchSampler(LABELS, p=3, k=2, batches_per_epoch=12, seed=9, rank=r, world_size=3)
        for r in range(3)
    ]
    for s in [full, *shares]:
        s.set_epoch(2)
    global_seq = list(full)
    per_rank = [list(s) for s in shares]
    assert all(len(r) == 4 for r in per_rank)
    interleaved = [per_rank[i % 3][i // 3] for i in range(12)]
    assert interleaved == global_seq


def test_impossible_requests_refused_with_numbers() -> None:
    with pytest.raises(ConfigError, match="p_classes=6 but the training data has only 5 classes"):
        PKBatchSampler(LABELS, p=6, k=2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        PKBatchSampler(LABELS, p=1, k=2)
    with pytest.raises(ConfigError, match="class_weighting"):
        PKBatchSampler(LABELS, p=2, k=2, weighting="inverse")


def test_singleton_classes_are_reported() -> None:
    s = PKBatchSampler(LABELS, p=2, k=2, class_names=["A", "B", "C", "D", "E"])
    assert s.singletons == ["D"]


@pytest.mark.parametrize("hard", [False, True])
def test_pairs_balanced_per_class(hard: bool) -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    sim = torch.randn(12, 12, generator=torch.Generator().manual_seed(0)) if hard else None
    a, t, y = balanced_pairs(labels, torch.Generator().manual_seed(0), similarity=sim)
    for c in range(3):
        in_c = labels[t] == c
        assert int(y[in_c].sum()) == 12  # 4 * 3 ordered similar pairs
        assert int((1 - y[in_c]).sum()) == 12  # and as many dissimilar ones
    assert torch.all((labels[a] == labels[t]) == y.bool())
    assert torch.all(a != t)
    if hard:  # the chosen negatives of class 0 are its 12 most similar ones
        neg = (y == 0) & (labels[t] == 0)
        cand = sim[:, :4][labels != 0]
        assert torch.allclose(
            sim[a[neg], t[neg]].sort().values, cand.flatten().topk(12).values.sort().values
        )


def test_repeated_image_views_form_positives() -> None:
    labels = torch.tensor([0, 0, 1, 1])  # e.g. a one-image class repeated as two views
    a, t, y = balanced_pairs(labels)
    assert int(y.sum()) == 4 and int((1 - y).sum()) == 4
