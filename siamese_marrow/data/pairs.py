"""Pairs formed inside a batch: equal numbers of similar and dissimilar pairs for every class.

Pairs index into the batch's embeddings, so each image is embedded once and reused by every pair
it takes part in. A pair is ordered ``(anchor, test)``; the class of a pair is the test's class.
"""

from __future__ import annotations

import torch


def balanced_pairs(
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    similarity: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced ordered pairs of batch positions.

    Args:
        labels: ``(N,)`` class of each batch position (a repeated image counts as its own view).
        generator: RNG of the random dissimilar-pair choice.
        similarity: ``(N, N)`` anchor-test similarities; when given, the dissimilar pairs of each
            class are its hardest ones (highest similarity) instead of random ones.
    Returns:
        ``anchor (P,)``, ``test (P,)`` batch positions and ``target (P,)`` float, 1 for similar.
        For every class c with n_c positions: ``n_c (n_c - 1)`` similar pairs (every ordered pair
        of its positions) and as many dissimilar pairs with a test of class c (fewer only if the
        batch has too few other images).
    """
    device = labels.device  # chosen on the CPU: a few dozen tiny ops, no device round trips
    labels = labels.cpu()
    if similarity is not None:
        similarity = similarity.cpu()
    n = labels.numel()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (anchor, test)
    eye = torch.eye(n, dtype=torch.bool)
    anchors, tests, targets = [], [], []
    for c in torch.unique(labels):
        in_c = labels == c
        pos = same & ~eye & in_c.unsqueeze(0)  # test in c, anchor in c, anchor != test
        pa, pt = pos.nonzero(as_tuple=True)
        if pa.numel() == 0:
            continue
        neg = ~same & in_c.unsqueeze(0)  # test in c, anchor not in c
        na, nt = neg.nonzero(as_tuple=True)
        take = min(pa.numel(), na.numel())
        if similarity is not None:
            order = torch.argsort(similarity[na, nt], descending=True, stable=True)[:take]
        else:
            order = torch.randperm(na.numel(), generator=generator)[:take]
        anchors += [pa, na[order]]
        tests += [pt, nt[order]]
        targets += [torch.ones(pa.numel()), torch.zeros(take)]
    if not anchors:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    return (
        torch.cat(anchors).to(device, non_blocking=True),
        torch.cat(tests).to(device, non_blocking=True),
        torch.cat(targets).to(device, non_blocking=True),
    )
