"""Adapting the consensus to a set of anchors in seconds: the embedding and the heads stay fixed,
the class prototypes move.

With prototype aggregation (``model.aggregate=proto``) the heads score a test against one vector
per class, the mean of that class's anchor embeddings. :func:`adapt_prototypes` starts from those
means and takes ``steps`` Adam steps on the cross-entropy of the consensus g of the anchors
themselves, so each class vector moves to where the heads separate the classes of *this* bank or
episode best; an L2 pull (``pull``) keeps it near its mean. It is what logistic regression on the
support set does for a linear classifier (and what P>M>F's test-time fine-tuning does to a whole
backbone), done through the pair heads on ``C x D`` numbers. Deterministic for given inputs.

With ``views`` (each anchor's 8 dihedral-view embeddings, ``bank.adapt_on=views``) the
cross-entropy runs over every view instead of over the anchors' mean embeddings: a 1-shot class
gives 8 examples of how its cell looks turned, not one point, and the prototypes start from the
same means as before.

With ``prototypes_per_class`` k > 1 (``bank.prototypes_per_class``) a class with many anchors
starts from several vectors, the k-means centres of its anchors (:func:`class_modes`: a cell
type that looks more than one way, a band and a segmented neutrophil, gets one for each look),
the consensus scores a test against the best of them, and all of them adapt. A class gets a
second centre only from ``MIN_ANCHORS_PER_PROTOTYPE`` anchors a centre up (k-means of a handful
of points is noise), so a few-shot support keeps one prototype a class.

Each step's loss is over at most ``per_class`` rows of each class: a class with more rows than
that (a bank's large class: 120 anchors x 8 views) gives a fresh random draw of them at every
step, so all of its anchors shape the prototype at the cost of ``per_class`` rows a step (bm7,
split seeds 0/1/2: 0.809 balanced accuracy vs 0.802 for the first 32 anchors' views). Smaller
classes (a few-shot support) take part whole at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from ..config import BankConfig
from .siamese import SiameseNet

#: Anchors a class needs per prototype before ``prototypes_per_class`` splits it: 20 anchors
#: give at most 2 centres, a 5-shot class one.
MIN_ANCHORS_PER_PROTOTYPE = 10


def class_modes(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    num_classes: int,
    per_class: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm prototypes ``(M, D)`` and their labels ``(M,)``: each class's renormalised
    k-means centres of its anchors ``(N, D)`` (labels ``(N,)``, -1 = ignore), ``min(per_class,
    n // MIN_ANCHORS_PER_PROTOTYPE)`` of them for a class of n anchors and at least one, its
    mean: :meth:`SiameseNet.class_prototypes` exactly when no class is split (``per_class=1``,
    or every class under twice the minimum). A class without anchors keeps its row, label -1.
    Deterministic for given inputs (k-means seeded with ``seed``, the best of 4 starts)."""
    if per_class < 1:
        raise ValueError(f"prototypes_per_class={per_class} must be >= 1")
    protos, labels = SiameseNet.class_prototypes(anchors, anchor_labels, num_classes)
    rows, labs = [], []
    for c in range(num_classes):
        members = anchors[anchor_labels == c]
        k = min(per_class, len(members) // MIN_ANCHORS_PER_PROTOTYPE)
        if k <= 1:
            rows.append(protos[c : c + 1])
            labs.append(labels[c : c + 1])
            continue
        x = members.detach().float().cpu().numpy()
        centres = KMeans(k, n_init=4, random_state=seed).fit(x).cluster_centers_
        rows.append(F.normalize(torch.from_numpy(centres).to(anchors), dim=-1))
        labs.append(labels.new_full((k,), c))
    return torch.cat(rows), torch.cat(labs)


def adapt_prototypes(
    model: SiameseNet,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    num_classes: int,
    steps: int = 100,
    lr: float = BankConfig.adapt_lr,
    pull: float = 0.0,
    per_class: int = 256,
    views: torch.Tensor | None = None,
    seed: int = 0,
    prototypes_per_class: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapted unit-norm class vectors ``(C, D)`` and their labels ``(C,)`` (-1: no anchors);
    ``(M, D)`` and ``(M,)`` with ``prototypes_per_class`` > 1, a large class's several
    (:func:`class_modes`).

    ``anchors (N, D)`` unit-norm with ``anchor_labels (N,)``; at most ``per_class`` anchors of
    each class take part in each step (a larger class: a new random draw of them every step,
    from a pool of at most ``POOL * per_class`` of its rows; classes of any size weigh alike).
    ``views (N, V, D)``: unit-norm embeddings of V views of each anchor; the rows are then every
    view of every anchor, ``per_class`` of them a step, so the cost of a step stays that of
    adapting on the means. ``steps=0`` gives the plain prototypes. Deterministic for given
    inputs (the draws come from a generator seeded with ``seed``).
    """
    if views is not None and (views.ndim != 3 or views.shape[0] != len(anchors)):
        raise ValueError(
            f"adapt_prototypes: views {tuple(views.shape)} for {len(anchors)} anchors; "
            "expected (N, V, D)"
        )
    protos, labels = class_modes(anchors, anchor_labels, num_classes, prototypes_per_class, seed)
    if steps <= 0 or len(labels[labels >= 0].unique()) < 2:
        return protos, labels
    if views is None:
        x, y = anchors.detach(), anchor_labels
    else:
        v = views.to(anchors.dtype).detach()  # (N, V, D)
        x, y = v.reshape(-1, v.shape[-1]), anchor_labels.repeat_interleave(v.shape[1])
    gen = torch.Generator().manual_seed(seed)
    pools = _pools(y, num_classes, POOL * per_class, gen)
    pool = torch.cat(pools)
    x, y = x[pool], y[pool]
    draw = _Draw(pools, per_class, gen)
    start = protos.detach()
    vec = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([vec], lr=lr)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        score = model.prototype_scorer(x)  # the anchors' share of the heads, once
        with torch.enable_grad():
            for _ in range(steps):
                rows = draw()
                logits = score(F.normalize(vec, dim=-1), labels, rows, num_classes)
                loss = F.cross_entropy(logits, y if rows is None else y[rows])
                if pull > 0:
                    loss = loss + pull * ((vec - start) ** 2).sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, req in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(req)
    out = F.normalize(vec.detach(), dim=-1)
    return torch.where((labels >= 0).unsqueeze(-1), out, protos), labels


# A class's rows kept for drawing from, in multiples of per_class: bounds the cached head share
# (POOL * per_class rows x head width per class) on a large bank.
POOL = 16


def _pools(
    labels: torch.Tensor, num_classes: int, cap: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """Each class's row indices (labels -1 dropped), a random ``cap`` of them when it has more."""
    pools = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if len(rows) > cap:
            rows = rows[torch.randperm(len(rows), generator=gen)[:cap]].sort().values
        pools.append(rows)
    return pools


class _Draw:
    """Rows, as positions in the concatenated pools, of one adaptation step: all of a class that
    has at most ``per_class`` rows, a fresh random ``per_class`` of a larger one. None when every
    class fits: the same rows at every step."""

    def __init__(self, pools: list[torch.Tensor], per_class: int, gen: torch.Generator) -> None:
        sizes = [len(p) for p in pools]
        self.starts = torch.tensor([0, *sizes]).cumsum(0)[:-1].tolist()
        self.sizes, self.per_class, self.gen = sizes, per_class, gen
        self.fixed = all(n <= per_class for n in sizes)

    def __call__(self) -> torch.Tensor | None:
        if self.fixed:
            return None
        parts = []
        for start, n in zip(self.starts, self.sizes, strict=True):
            if n <= self.per_class:
                parts.append(torch.arange(start, start + n))
            else:
                parts.append(start + torch.randperm(n, generator=self.gen)[: self.per_class])
        return torch.cat(parts)
