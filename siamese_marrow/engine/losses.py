"""The training objective: BCE of each gate on balanced pairs + cross-entropy of the consensus."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.pairs import balanced_pairs
from ..models import SiameseNet


def in_batch_anchor_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` anchor labels for every test row: the batch's labels, ``-1`` on the diagonal
    (an image is never its own anchor; a repeated image's other augmented view is)."""
    n = labels.numel()
    m = labels.unsqueeze(0).expand(n, n).clone()
    m.fill_diagonal_(-1)
    return m


def siamese_loss(
    model: SiameseNet,
    emb: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    bce_weight: float = 1.0,
    consensus_weight: float = 1.0,
    hard_negatives: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch from its embeddings ``emb (N, D)`` and ``labels (N,)``.

    The pair heads score all ``N x N`` (test, anchor) combinations in one call. The gates are
    trained by BCE on the balanced pairs; the consensus g of every test over the other images of
    the batch is trained by cross-entropy over the classes present in the batch.
    """
    l1, l2 = model.score_matrix(emb, emb)  # (N tests, N anchors)
    sim = (emb @ emb.T).detach() if hard_negatives else None
    a, t, target = balanced_pairs(labels, generator=generator, similarity=sim)
    bce1 = F.binary_cross_entropy_with_logits(l1[t, a], target)
    bce2 = F.binary_cross_entropy_with_logits(l2[t, a], target)
    anchor_labels = in_batch_anchor_labels(labels)
    if model.uses_prototypes:  # each test against the prototypes of the other images
        protos, proto_labels = model.class_prototypes(emb, anchor_labels, num_classes)
        logits, _ = model.prototype_logits(protos, proto_labels, emb)
    else:
        logits = model.consensus_logits(
            (torch.sigmoid(l1), torch.sigmoid(l2)), anchor_labels, num_classes
        )
    reachable = torch.isfinite(logits.gather(1, labels.unsqueeze(1))).squeeze(1)
    ce = (
        F.cross_entropy(logits[reachable], labels[reachable])
        if reachable.any()
        else logits.sum() * 0.0
    )
    loss = bce_weight * (bce1 + bce2) + consensus_weight * ce
    with torch.no_grad():
        acc = (logits.argmax(1) == labels).float().mean()
    parts = {
        "loss": float(loss.detach()),
        "bce_concat": float(bce1.detach()),
        "bce_hadamard": float(bce2.detach()),
        "consensus_ce": float(ce.detach()),
        "batch_acc": float(acc),
        "pairs": int(target.numel()),
    }
    return loss, parts


class ProxyLoss(nn.Module):
    """Class-level loss on the embedding: a cosine (normalised-softmax) classifier over the
    training classes, ``CE(softmax(cos(f, w_c) / temperature))`` (NormFace; pytorch-metric-
    learning's ``NormalizedSoftmaxLoss``). One learned proxy ``w_c`` per class pulls each class's
    embeddings together and pushes the classes apart with the whole batch as negatives, which
    pairs alone do not. Used only in training: the proxies are not part of the model.
    """

    def __init__(self, num_classes: int, dim: int, temperature: float = 0.05) -> None:
        super().__init__()
        if num_classes < 2 or dim < 1 or not temperature > 0:
            raise ValueError(f"ProxyLoss({num_classes}, {dim}, temperature={temperature})")
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.temperature = temperature

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb (N, D)`` unit-norm -> ``(N, C)`` cosine / temperature."""
        return emb @ F.normalize(self.proxies, dim=-1).T / self.temperature

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(emb), labels)
