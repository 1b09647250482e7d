"""The Siamese model: a shared embedding, two gated pair heads and the class consensus."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbone import Backbone, create_backbone
from .heads import ConcatHead, Consensus, HadamardHead


class SiameseNet(nn.Module):
    """Embed images once, score many pairs in one call, turn the scores into class probabilities.

    Shapes: images ``(B, 3, H, W)``; embeddings ``(B, D)``, unit norm; ``pair_scores`` broadcasts
    ``fa (..., D)`` against ``ft (..., D)``; ``score_matrix`` gives ``(B, M)`` for B tests and M
    anchors.
    """

    def __init__(
        self,
        backbone: Backbone,
        concat_kind: str = ModelConfig.concat_head,
        head_hidden: int = ModelConfig.head_hidden,
        tau_init: float = ModelConfig.tau_init,
        aggregate: str = ModelConfig.aggregate,
        aggregate_k: int = ModelConfig.aggregate_k,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_concat = ConcatHead(backbone.dim, concat_kind, head_hidden)
        self.head_hadamard = HadamardHead(backbone.dim)
        self.consensus_head = Consensus(tau_init, aggregate, aggregate_k)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, D)``, L2-normalised."""
        return self.backbone(x)

    def pair_logits(self, fa: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the two gates for broadcastable ``fa (..., D)``, ``ft (..., D)``."""
        return self.head_concat(fa, ft), self.head_hadamard(fa, ft)

    def pair_scores(self, fa: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate probabilities ``(h1, h2)``, each of the broadcast shape of ``fa`` and ``ft``."""
        l1, l2 = self.pair_logits(fa, ft)
        return torch.sigmoid(l1), torch.sigmoid(l2)

    def score_matrix(
        self, anchors: torch.Tensor, tests: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, M)`` of both gates for tests ``(B, D)`` against anchors ``(M, D)``."""
        return self.pair_logits(anchors.unsqueeze(0), tests.unsqueeze(1))

    def gathered_logits(
        self, anchors: torch.Tensor, rows: torch.Tensor, tests: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits ``(B, K)`` of each test ``(B, D)`` against its own K candidate anchors,
        given as ``rows (B, K)`` into ``anchors (N, D)``.

        The anchor half of the concatenated head's first layer runs once per anchor row, not
        once per (test, candidate) pair: the cost is ``O(N D H + B D H + B K H)``.
        """
        za = self.head_concat.anchor_part(anchors)  # (N, H)
        zt = self.head_concat.test_part(tests)  # (B, H)
        l1 = self.head_concat.finish(za[rows] + zt.unsqueeze(1))
        l2 = self.head_hadamard(anchors[rows], tests.unsqueeze(1))
        return l1, l2

    def consensus(
        self,
        scores: tuple[torch.Tensor, torch.Tensor],
        classes: torch.Tensor,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """Class probabilities g ``(B, C)`` from gate probabilities ``(h1, h2)``, each ``(B, M)``.

        ``classes``: ``(M,)`` or ``(B, M)`` class index of each anchor (-1 = ignore).
        """
        h1, h2 = scores
        c = int(classes.max().item()) + 1 if num_classes is None else num_classes
        return torch.softmax(self.consensus_head(h1, h2, classes, c), dim=-1)

    @property
    def uses_prototypes(self) -> bool:
        return self.consensus_head.aggregate == "proto"

    @staticmethod
    def class_prototypes(
        anchors: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm class means ``(C, D)`` of ``anchors (N, D)`` by ``anchor_labels (N,)``
        (-1 = ignore), and ``(C,)`` labels: the class index, or -1 for a class without anchors.

        Batched: ``anchors (N, D)`` with ``anchor_labels (B, N)`` gives ``(B, C, D)`` and
        ``(B, C)``, each row's prototypes over its own anchors (training leaves the test out).
        """
        classes = torch.arange(num_classes, device=anchor_labels.device)
        onehot = (anchor_labels.unsqueeze(-1) == classes).to(anchors.dtype)  # (..., N, C)
        sums = onehot.transpose(-1, -2) @ anchors  # (..., C, D)
        present = onehot.sum(-2) > 0  # (..., C)
        labels = torch.where(
            present, classes.expand_as(present), torch.full_like(present, -1, dtype=torch.long)
        )
        return F.normalize(sums, dim=-1), labels

    def prototype_logits(
        self,
        protos: torch.Tensor,
        proto_labels: torch.Tensor,
        tests: torch.Tensor,
        num_classes: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Consensus logits ``(B, C)`` of tests ``(B, D)`` against prototypes ``(M, D)`` or
        per-test ``(B, M, D)``, and the gate probabilities ``(h1, h2)``, each ``(B, M)``. A class
        may have several prototypes (its score: the best of them); ``num_classes`` defaults to
        M, one prototype a class."""
        if protos.dim() == 2:
            l1, l2 = self.score_matrix(protos, tests)
        else:
            l1, l2 = self.pair_logits(protos, tests.unsqueeze(1))
        h1, h2 = torch.sigmoid(l1), torch.sigmoid(l2)
        labels = proto_labels.expand(len(tests), -1) if proto_labels.dim() == 1 else proto_labels
        n = labels.shape[-1] if num_classes is None else num_classes
        return self.consensus_head(h1, h2, labels, n), (h1, h2)

    def prototype_scorer(self, tests: torch.Tensor) -> Callable[..., torch.Tensor]:
        """``score(protos (M, D), proto_labels (M,), rows=None, num_classes=M) -> (B, C)``: the
        consensus logits of :meth:`prototype_logits` against the fixed ``tests (B, D)`` (or the
        ``rows`` of them), whose share of both heads (the concatenated head's test half, the
        Hadamard head's weighted test) is computed once here, without gradient: what adapting
        prototypes needs, scoring the same anchors at every step while only the prototypes
        move."""
        with torch.no_grad():
            zt = self.head_concat.test_part(tests).unsqueeze(1)  # (B, 1, H)
            wt = tests * self.head_hadamard.linear.weight[0]  # (B, D)
        bias = self.head_hadamard.linear.bias

        def score(
            protos: torch.Tensor,
            proto_labels: torch.Tensor,
            rows: torch.Tensor | None = None,
            num_classes: int | None = None,
        ) -> torch.Tensor:
            z, w = (zt, wt) if rows is None else (zt[rows], wt[rows])
            l1 = self.head_concat.finish(self.head_concat.anchor_part(protos).unsqueeze(0) + z)
            l2 = w @ protos.T + bias
            labels = proto_labels.expand(len(w), -1)
            n = len(protos) if num_classes is None else num_classes
            return self.consensus_head(torch.sigmoid(l1), torch.sigmoid(l2), labels, n)

        return score

    @torch.no_grad()
    def anchor_consensus(
        self,
        anchors: torch.Tensor,
        anchor_labels: torch.Tensor,
        queries: torch.Tensor,
        num_classes: int,
        rows: torch.Tensor | None = None,
        chunk: int = 256,
        prototypes: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The consensus of queries over a set of anchors: the one function that training
        validation, few-shot episodes, ``classify`` and ``search`` all use.

        ``anchors (N, D)`` with ``anchor_labels (N,)`` (class index, -1 = ignore) and
        ``queries (B, D)``. Each query is scored against every anchor, or, when ``rows (B, K)``
        is given, against its own K candidate anchors (rows into ``anchors``, -1 = padding,
        ignored by the consensus). Returns ``g (B, C)`` and the gate probabilities ``h1, h2``,
        ``(B, N)`` or ``(B, K)``; queries are processed ``chunk`` at a time. With ``proto``
        aggregation g comes from the class prototypes: ``prototypes`` (``(M, D)`` and their
        ``(M,)`` labels, e.g. over all of a bank's anchors, one or more a class) or those of
        ``anchors``.
        """
        if self.uses_prototypes and prototypes is None:
            prototypes = self.class_prototypes(anchors, anchor_labels, num_classes)
        gs, h1s, h2s = [], [], []
        for i in range(0, len(queries), chunk):
            q = queries[i : i + chunk]
            if rows is None:
                l1, l2 = self.score_matrix(anchors, q)
                labels = anchor_labels
            else:
                r = rows[i : i + chunk]
                safe = r.clamp(min=0)
                l1, l2 = self.gathered_logits(anchors, safe, q)
                labels = torch.where(r >= 0, anchor_labels[safe], torch.full_like(r, -1))
            h1, h2 = torch.sigmoid(l1), torch.sigmoid(l2)
            if prototypes is not None and self.uses_prototypes:
                logits, _ = self.prototype_logits(*prototypes, q, num_classes)
                gs.append(torch.softmax(logits, dim=-1))
            else:
                gs.append(self.consensus((h1, h2), labels, num_classes))
            h1s.append(h1)
            h2s.append(h2)
        if not gs:
            k = len(anchors) if rows is None else rows.shape[1]
            empty = queries.new_zeros((0, k))
            return queries.new_zeros((0, num_classes)), empty, empty
        return torch.cat(gs), torch.cat(h1s), torch.cat(h2s)

    def consensus_logits(
        self, scores: tuple[torch.Tensor, torch.Tensor], classes: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """``(B, C)`` logits of g (``-inf`` for classes without anchors), for the loss."""
        h1, h2 = scores
        return self.consensus_head(h1, h2, classes, num_classes)


def build_model(cfg: ModelConfig, pretrained: str | None = None) -> SiameseNet:
    """The model described by ``cfg``; ``pretrained`` overrides ``cfg.pretrained`` (e.g. "none"
    when weights come from a checkpoint next)."""
    backbone = create_backbone(
        cfg.backbone,
        cfg.pretrained if pretrained is None else pretrained,
        embed_dim=cfg.embed_dim,
        img_size=cfg.img_size,
        drop_rate=cfg.drop_rate,
    )
    return SiameseNet(
        backbone,
        concat_kind=cfg.concat_head,
        head_hidden=cfg.head_hidden,
        tau_init=cfg.tau_init,
        aggregate=cfg.aggregate,
        aggregate_k=cfg.aggregate_k,
    )
