"""The two gated pair heads and the consensus over classes (DESIGN.md, "The model").

Heads return logits; ``sigmoid`` of a logit is the gate probability that anchor and test show the
same class. Inputs broadcast: ``fa`` of shape ``(1, M, D)`` against ``ft`` of shape ``(B, 1, D)``
scores every test against every anchor, ``(B, M)``, in one call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig

CONCAT_KINDS = ("mlp", "linear", "mlp_sym")


class ConcatHead(nn.Module):
    """``h1 = sigmoid(W1 [f(a); f(t)])``: global structure.

    ``kind="linear"``: W1 is one linear map ``R^{2D} -> R``. ``kind="mlp"``: one hidden ReLU layer,
    which can compare the two halves (a linear map of a concatenation cannot). ``kind="mlp_sym"``:
    the same MLP, averaged over both orders ``[f(a); f(t)]`` and ``[f(t); f(a)]``, so
    ``h1(a, t) = h1(t, a)`` as "same cell type" is. ``mlp_sym`` starts as a comparator of the
    halves: the right half's first-layer weights are the negative of the left's and the output
    weights are negative, so at initialisation h1 is a function of ``f(a) - f(t)`` alone
    (``|W (a - t)|``-like, largest for ``a = t``), not a class detector; training may move it
    anywhere. The first layer is applied to each half separately and the results broadcast-added,
    so B tests x M anchors cost ``O((B + M) D H + B M H)``, not ``O(B M D H)``.
    """

    def __init__(
        self,
        dim: int,
        kind: str = ModelConfig.concat_head,
        hidden: int = ModelConfig.head_hidden,
    ) -> None:
        super().__init__()
        if kind not in CONCAT_KINDS:
            raise ValueError(f"concat head kind {kind!r} is not one of {', '.join(CONCAT_KINDS)}")
        self.dim = dim
        self.kind = kind
        self.first = nn.Linear(2 * dim, 1 if kind == "linear" else hidden)
        self.out = nn.Linear(hidden, 1) if kind != "linear" else None
        if kind == "mlp_sym":
            with torch.no_grad():
                self.first.weight[:, dim:] = -self.first.weight[:, :dim]
                self.out.weight.copy_(-self.out.weight.abs())

    def _left(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.first.weight[:, : self.dim].T

    def _right(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.first.weight[:, self.dim :].T

    def anchor_part(self, fa: torch.Tensor) -> torch.Tensor:
        """The anchor's share of the first layer, no bias: ``(..., D) -> (..., H)`` (``2H`` for
        ``mlp_sym``: the anchor as left and as right half)."""
        if self.kind == "mlp_sym":
            return torch.cat([self._left(fa), self._right(fa)], -1)
        return self._left(fa)

    def test_part(self, ft: torch.Tensor) -> torch.Tensor:
        """The test's share of the first layer, with the bias: ``(..., D) -> (..., H)`` (``2H``
        for ``mlp_sym``)."""
        if self.kind == "mlp_sym":
            return torch.cat([self._right(ft), self._left(ft)], -1) + self.first.bias.repeat(2)
        return self._right(ft) + self.first.bias

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the summed shares ``z (..., H)`` (``2H``: both orders, averaged)
        -> ``(...)``."""
        if self.out is None:
            return z.squeeze(-1)
        if self.kind == "mlp_sym":
            a, b = z.chunk(2, dim=-1)
            return ((self.out(torch.relu(a)) + self.out(torch.relu(b))) / 2).squeeze(-1)
        return self.out(torch.relu(z)).squeeze(-1)

    def forward(self, fa: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """``fa (..., D)``, ``ft (..., D)`` broadcastable -> logits of the broadcast shape."""
        return self.finish(self.anchor_part(fa) + self.test_part(ft))


class HadamardHead(nn.Module):
    """``h2 = sigmoid(W2 (f(a) * f(t)))``: local texture, from the elementwise product."""

    def __init__(self, dim: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        # Start as a scaled cosine similarity of the unit-norm embeddings, centred at 0.5.
        nn.init.constant_(self.linear.weight, init_scale)
        nn.init.constant_(self.linear.bias, -init_scale * 0.5)

    def forward(self, fa: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        """``fa (..., D)``, ``ft (..., D)`` broadcastable -> logits of the broadcast shape."""
        w = self.linear.weight[0]
        if fa.dim() == 3 and ft.dim() == 3 and fa.shape[0] == 1 and ft.shape[1] == 1:
            # (1, M, D) x (B, 1, D): a matrix product instead of a (B, M, D) intermediate
            return (ft[:, 0] * w) @ fa[0].T + self.linear.bias
        return (fa * ft * w).sum(-1) + self.linear.bias


AGGREGATES = ("mean", "max", "topk", "proto")


class Consensus(nn.Module):
    """``g_k = softmax_k((h1_k + h2_k) / tau)`` with a learned temperature ``tau``.

    ``h1_k + h2_k`` is the per-class aggregate of the pair score ``h1 + h2`` over the anchors of
    class k: their mean, their max, or the mean of the top ``k`` (for ``mean``, the aggregate of the
    sum is the sum of the aggregates). ``proto`` aggregates the anchors' embeddings instead: the
    heads score the test against the class prototype (the renormalised mean embedding of class
    k's anchors, :meth:`SiameseNet.class_prototypes`), one "anchor" per class, so the score does
    not depend on how many anchors a class has; here it is then the max over that class's
    prototypes: that one, or its best of several (``bank.prototypes_per_class``,
    :func:`~siamese_marrow.models.adapt.class_modes`).
    """

    def __init__(
        self,
        tau_init: float = ModelConfig.tau_init,
        aggregate: str = ModelConfig.aggregate,
        k: int = ModelConfig.aggregate_k,
    ) -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if tau_init <= 0:
            raise ValueError(f"tau_init={tau_init} must be > 0")
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau_init)))
        self.aggregate = aggregate
        self.k = k

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def class_scores(
        self, pair_score: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """Aggregate ``pair_score (B, M)`` per class.

        Args:
            pair_score: ``h1 + h2`` for each test (row) and anchor (column).
            anchor_labels: ``(M,)`` or ``(B, M)`` class index of each anchor; ``-1`` excludes it
                (padding, or the test image itself).
        Returns:
            ``(B, C)`` aggregates; ``-inf`` where a test has no anchor of that class.
        """
        b, m = pair_score.shape
        labels = anchor_labels.expand(b, m) if anchor_labels.dim() == 1 else anchor_labels
        onehot = labels.unsqueeze(-1) == torch.arange(num_classes, device=labels.device)  # (B,M,C)
        counts = onehot.sum(1)  # (B, C)
        if self.aggregate == "mean":
            sums = torch.einsum("bm,bmc->bc", pair_score, onehot.to(pair_score.dtype))
            out = sums / counts.clamp(min=1)
        else:
            masked = pair_score.unsqueeze(-1).masked_fill(~onehot, float("-inf"))  # (B, M, C)
            if self.aggregate in ("max", "proto"):  # proto: a class's best prototype
                out = masked.amax(1)
            else:
                k = min(self.k, m)
                top = masked.topk(k, dim=1).values  # (B, k, C)
                valid = torch.isfinite(top)
                out = top.masked_fill(~valid, 0).sum(1) / valid.sum(1).clamp(min=1)
        return out.masked_fill(counts == 0, float("-inf"))

    def forward(
        self,
        h1: torch.Tensor,
        h2: torch.Tensor,
        anchor_labels: torch.Tensor,
        num_classes: int,
    ) -> torch.Tensor:
        """Consensus logits ``(B, C)``: ``log_softmax`` or ``softmax`` of them gives g.

        ``h1``, ``h2`` are gate probabilities ``(B, M)``. Classes without anchors get ``-inf``.
        """
        s = self.class_scores(h1 + h2, anchor_labels, num_classes)
        absent = torch.isinf(s)
        # divide finite scores only: -inf / tau would give a NaN gradient for tau
        return (s.masked_fill(absent, 0.0) / self.tau).masked_fill(absent, float("-inf"))
