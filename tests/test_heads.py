"""Pair heads and consensus against values worked out by hand on 2-D embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from siamese_marrow.models.heads import ConcatHead, Consensus, HadamardHead


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two anchors
T = torch.tensor([[0.6, 0.8]])  # one test


def test_concat_linear_by_hand() -> None:
    head = ConcatHead(2, "linear")
    with torch.no_grad():
        head.first.weight.copy_(torch.tensor([[1.0, 2.0, -1.0, 0.5]]))
        head.first.bias.fill_(0.25)
    logits = head(A.unsqueeze(0), T.unsqueeze(1))  # (1, 2)
    # anchor 0: 1*1 + 2*0 - 1*0.6 + 0.5*0.8 + 0.25 = 1.05
    # anchor 1: 1*0 + 2*1 - 0.6 + 0.4 + 0.25 = 2.05
    assert logits.shape == (1, 2)
    assert torch.allclose(logits, torch.tensor([[1.05, 2.05]]), atol=1e-6)
    assert torch.sigmoid(logits)[0, 0].item() == pytest.approx(sig(1.05), abs=1e-6)


def test_concat_mlp_by_hand() -> None:
    head = ConcatHead(2, "mlp", hidden=2)
    with torch.no_grad():
        head.first.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]]))
        head.first.bias.zero_()
        head.out.weight.copy_(torch.tensor([[-2.0, -3.0]]))
        head.out.bias.fill_(1.0)
    logits = head(A.unsqueeze(0), T.unsqueeze(1))
    # anchor 0: relu([1-0.6, 0-0.8]) = [0.4, 0] -> -0.8 + 1 = 0.2
    # anchor 1: relu([0-0.6, 1-0.8]) = [0, 0.2] -> -0.6 + 1 = 0.4
    assert torch.allclose(logits, torch.tensor([[0.2, 0.4]]), atol=1e-6)


def test_concat_broadcast_equals_explicit_concatenation() -> None:
    torch.manual_seed(0)
    head = ConcatHead(5, "mlp", hidden=7)
    fa, ft = torch.randn(4, 5), torch.randn(3, 5)
    fast = head(fa.unsqueeze(0), ft.unsqueeze(1))
    cat = torch.cat([fa.unsqueeze(0).expand(3, 4, 5), ft.unsqueeze(1).expand(3, 4, 5)], -1)
    slow = head.out(torch.relu(head.first(cat))).squeeze(-1)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_hadamard_by_hand() -> None:
    head = HadamardHead(2)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
        head.linear.bias.fill_(0.5)
    logits = head(A.unsqueeze(0), T.unsqueeze(1))
    # anchor 0: 2*0.6 + 0.5 = 1.7; anchor 1: -1*0.8 + 0.5 = -0.3
    assert torch.allclose(logits, torch.tensor([[1.7, -0.3]]), atol=1e-6)
    # the matrix fast path equals the elementwise form
    assert torch.allclose(head(A, T.expand(2, 2)), torch.tensor([1.7, -0.3]), atol=1e-6)


def test_consensus_by_hand() -> None:
    h1 = torch.tensor([[0.9, 0.7, 0.2]])
    h2 = torch.tensor([[0.8, 0.5, 0.4]])
    labels = torch.tensor([0, 0, 1])
    cons = Consensus(tau_init=0.5, aggregate="mean")
    logits = cons(h1, h2, labels, num_classes=3)
    # class 0: mean(1.7, 1.2) = 1.45 -> /0.5 = 2.9; class 1: 0.6 -> 1.2; class 2: no anchors
    assert logits[0, 0].item() == pytest.approx(2.9, abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(1.2, abs=1e-5)
    assert logits[0, 2].item() == float("-inf")
    g = torch.softmax(logits, -1)
    e = math.exp(2.9) / (math.exp(2.9) + math.exp(1.2))
    assert g[0, 0].item() == pytest.approx(e, abs=1e-6)
    assert g[0, 2].item() == 0.0
    assert Consensus(0.5, "max")(h1, h2, labels, 2)[0, 0].item() == pytest.approx(3.4, abs=1e-5)
    topk = Consensus(0.5, "topk", k=1)(h1, h2, labels, 2)
    assert topk[0, 0].item() == pytest.approx(3.4, abs=1e-5)


def test_consensus_per_row_labels_exclude_self() -> None:
    h = torch.tensor([[0.9, 0.8], [0.8, 0.9]])
    labels = torch.tensor([[-1, 0], [0, -1]])
    logits = Consensus(1.0, "mean")(h, h, labels, 1)
    assert torch.allclose(logits, torch.tensor([[1.6], [1.6]]))


def test_temperature_is_learned() -> None:
    cons = Consensus(0.1)
    assert cons.tau.item() == pytest.approx(0.1)
    assert cons.log_tau.requires_grad


def test_gathered_logits_equal_pairwise_logits() -> None:
    from siamese_marrow.models.backbone import create_backbone
    from siamese_marrow.models.siamese import SiameseNet

    torch.manual_seed(0)
    net = SiameseNet(create_backbone("test_efficientnet", "none", embed_dim=6), "mlp", 5)
    anchors, tests = torch.randn(9, 6), torch.randn(4, 6)
    rows = torch.randint(0, 9, (4, 3))
    g1, g2 = net.gathered_logits(anchors, rows, tests)
    f1, f2 = net.score_matrix(anchors, tests)  # (4, 9): every test against every anchor
    assert torch.allclose(g1, f1.gather(1, rows), atol=1e-5)
    assert torch.allclose(g2, f2.gather(1, rows), atol=1e-5)
