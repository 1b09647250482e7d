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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .siamese import SiameseNet


def adapt_prototypes(
    model: SiameseNet,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    num_classes: int,
    steps: int = 100,
    lr: float = 0.05,
    pull: float = 0.0,
    per_class: int = 256,
    views: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapted unit-norm class vectors ``(C, D)`` and their labels ``(C,)`` (-1: no anchors).

    ``anchors (N, D)`` unit-norm with ``anchor_labels (N,)``; at most ``per_class`` anchors of
    each class take part (the first ones: classes of any size weigh alike). ``views (N, V, D)``:
    unit-norm embeddings of V views of each anchor; the loss is then over every view of the
    first ``max(1, per_class // V)`` anchors of each class, so at most ``per_class`` rows per
    class and the cost of a step stays that of adapting on the means. ``steps=0`` gives the
    plain prototypes.
    """
    if views is not None and (views.ndim != 3 or views.shape[0] != len(anchors)):
        raise ValueError(
            f"adapt_prototypes: views {tuple(views.shape)} for {len(anchors)} anchors; "
            "expected (N, V, D)"
        )
    protos, labels = model.class_prototypes(anchors, anchor_labels, num_classes)
    if steps <= 0 or int((labels >= 0).sum()) < 2:
        return protos, labels
    if views is not None:
        per_class = max(1, per_class // views.shape[1])
    keep = _first_per_class(anchor_labels, num_classes, per_class)
    if views is None:
        x, y = anchors[keep].detach(), anchor_labels[keep]
    else:
        v = views[keep].to(anchors.dtype).detach()  # (n, V, D)
        x, y = v.reshape(-1, v.shape[-1]), anchor_labels[keep].repeat_interleave(v.shape[1])
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
                logits = score(F.normalize(vec, dim=-1), labels)
                loss = F.cross_entropy(logits, y)
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


def _first_per_class(labels: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """Indices of at most ``per_class`` rows of each class (labels -1 dropped), in order."""
    keep = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        keep.append(rows[:per_class])
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
