"""The model options of issue 11, each against what it should compute: the symmetric concat head,
prototype aggregation, the proxy loss, dihedral test-time augmentation, stain jitter, and training
without a validation split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL
from PIL import Image

from siamese_marrow.config import ModelConfig, load_config
from siamese_marrow.data.transforms import StainJitter
from siamese_marrow.engine.losses import ProxyLoss, in_batch_anchor_labels, siamese_loss
from siamese_marrow.engine.train import train
from siamese_marrow.models import build_model
from siamese_marrow.models.embed import dihedral_views, embed_batch, embed_paths
from siamese_marrow.models.heads import ConcatHead


def tiny(**changes: object):  # noqa: ANN201
    cfg = ModelConfig(backbone="test_efficientnet", pretrained="none", embed_dim=8, img_size=32)
    for k, v in changes.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def random_pngs(folder: Path, n: int, hw: tuple[int, int], seed: int) -> list[str]:
    """``n`` random-noise RGB PNG files of height x width ``hw`` in ``folder``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


# --- the symmetric concatenated head --------------------------------------------------------------


def test_symmetric_head_scores_both_orders_alike_and_is_their_mean() -> None:
    torch.manual_seed(0)
    head = ConcatHead(6, "mlp_sym", hidden=5)
    a, t = torch.randn(4, 6), torch.randn(3, 6)
    ab = head(a.unsqueeze(0), t.unsqueeze(1))  # (3 tests, 4 anchors)
    ba = head(t.unsqueeze(0), a.unsqueeze(1))  # (4, 3)
    assert torch.allclose(ab, ba.T, atol=1e-6)

    def order(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # the plain MLP on [x; y]
        cat = torch.cat([x, y], -1)
        return head.out(torch.relu(head.first(cat))).squeeze(-1)

    i, j = 2, 1
    want = (order(a[j], t[i]) + order(t[i], a[j])) / 2
    assert ab[i, j].item() == pytest.approx(want.item(), abs=1e-6)
    plain = ConcatHead(6, "mlp", hidden=5)
    assert not torch.allclose(plain(a, a.flip(0)), plain(a.flip(0), a), atol=1e-3)


def test_symmetric_head_starts_as_a_comparator_of_the_halves() -> None:
    """At initialisation mlp_sym's h1 depends on f(a) - f(t) only, and a pair of equal
    embeddings scores highest: ReLU(W d + b) + ReLU(-W d + b) >= 2 ReLU(b) for every d, and the
    output weights are negative."""
    torch.manual_seed(3)
    head = ConcatHead(6, "mlp_sym", hidden=16)
    w = head.first.weight
    assert torch.equal(w[:, 6:], -w[:, :6])
    assert bool((head.out.weight <= 0).all())
    a, t, shift = torch.randn(5, 6), torch.randn(5, 6), torch.randn(1, 6)
    assert torch.allclose(head(a, t), head(a + shift, t + shift), atol=1e-5)
    scores = head(a.unsqueeze(0), torch.cat([a, t]).unsqueeze(1))  # (10 tests, 5 anchors)
    for i in range(5):  # anchor i against itself beats it against any other test
        assert scores[i, i] >= scores[:, i].max() - 1e-6
    plain = ConcatHead(6, "mlp", hidden=16)
    assert not torch.allclose(plain(a, t), plain(a + shift, t + shift), atol=1e-3)


def test_symmetric_head_in_the_model_gathered_equals_full_matrix() -> None:
    model = tiny(concat_head="mlp_sym")
    anchors, q = unit(10, 8, 0), unit(3, 8, 1)
    rows = torch.tensor([[0, 3, 9], [1, 1, 2], [5, 6, 7]])
    l1, l2 = model.gathered_logits(anchors, rows, q)
    f1, f2 = model.score_matrix(anchors, q)
    assert torch.allclose(l1, f1.gather(1, rows), atol=1e-5)
    assert torch.allclose(l2, f2.gather(1, rows), atol=1e-5)


# --- prototype aggregation ------------------------------------------------------------------------


def test_prototype_consensus_scores_the_class_means() -> None:
    model = tiny(aggregate="proto")
    anchors = unit(9, 8, 2)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])  # 6 / 2 / 1 anchors
    q = unit(4, 8, 3)
    g, h1, h2 = model.anchor_consensus(anchors, labels, q, 3)
    protos = torch.stack([F.normalize(anchors[labels == c].mean(0), dim=0) for c in range(3)])
    l1, l2 = model.score_matrix(protos, q)
    score = torch.sigmoid(l1) + torch.sigmoid(l2)
    want = torch.softmax(score / model.consensus_head.tau, dim=-1)
    assert torch.allclose(g, want, atol=1e-6)
    assert h1.shape == (4, 9)  # the pair probabilities of every anchor, the evidence
    # adding copies of class 0's anchors changes nothing: no bias towards big classes
    more = torch.cat([anchors, anchors[:6]])
    g2, _, _ = model.anchor_consensus(more, torch.cat([labels, labels[:6]]), q, 3)
    assert torch.allclose(g, g2, atol=1e-6)


def test_prototype_loss_leaves_each_test_out_of_its_prototypes() -> None:
    model = tiny(aggregate="proto")
    emb = unit(6, 8, 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    anchor_labels = in_batch_anchor_labels(labels)
    protos, proto_labels = model.class_prototypes(emb, anchor_labels, 3)
    # row 0: class 0 from images 1 and 2 only, class 1 from 3 and 4, class 2 from 5
    assert torch.allclose(protos[0, 0], F.normalize(emb[1] + emb[2], dim=0), atol=1e-6)
    assert torch.allclose(protos[0, 2], emb[5], atol=1e-6)
    # row 5 (the only image of class 2): its own class has no other image
    assert proto_labels[5].tolist() == [0, 1, -1]
    # the consensus of the loss is the prototype consensus of those leave-one-out prototypes
    logits, _ = model.prototype_logits(protos, proto_labels, emb)
    reach = torch.isfinite(logits.gather(1, labels.unsqueeze(1))).squeeze(1)
    want = F.cross_entropy(logits[reach], labels[reach]).item()
    _, parts = siamese_loss(model, emb, labels, 3)
    assert parts["consensus_ce"] == pytest.approx(want, abs=1e-5)
    assert reach.tolist() == [True] * 5 + [False]


# --- the proxy loss -------------------------------------------------------------------------------


def test_proxy_loss_by_hand() -> None:
    loss = ProxyLoss(2, 2, temperature=0.5)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # unit after normalising
    emb = torch.tensor([[0.6, 0.8]])
    # cosines 0.6 and 0.8; logits / 0.5 = 1.2 and 1.6; CE for class 0 = -log(e^1.2 / (e^1.2+e^1.6))
    want = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    assert loss(emb, torch.tensor([0])).item() == pytest.approx(want, abs=1e-6)


# --- dihedral test-time augmentation -------------------------------------------------------------


def test_dihedral_views_are_the_eight_distinct_symmetries() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = dihedral_views(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


def test_tta_embedding_is_the_mean_of_the_eight_views(tmp_path: Path) -> None:
    model = tiny()
    paths = random_pngs(tmp_path, 3, (40, 32), seed=0)
    emb, _ = embed_paths(model, paths, tta=True)
    plain, _ = embed_paths(model, paths)
    from siamese_marrow.data.transforms import eval_transform
    from siamese_marrow.models.embed import _ImageDataset

    x = torch.stack(
        [_ImageDataset(paths, eval_transform(model.backbone.spec))[i][0] for i in range(3)]
    )
    with torch.no_grad():
        views = torch.stack([model.embed(v) for v in dihedral_views(x)])  # (8, 3, D)
    want = F.normalize(views.mean(0), dim=-1).numpy()
    np.testing.assert_allclose(emb, want, atol=1e-5)
    np.testing.assert_allclose(plain, views[0].numpy(), atol=1e-5)
    # invariant: the TTA embedding of a rotated image is the same
    with torch.no_grad():
        rot = embed_batch(model, torch.rot90(x, 1, dims=(-2, -1)), tta=True).numpy()
    np.testing.assert_allclose(rot, want, atol=1e-5)


# --- stain jitter ---------------------------------------------------------------------------------


def test_stain_jitter_round_trips_and_scales_stain_concentrations() -> None:
    x = torch.rand(3, 6, 6) * 0.8 + 0.1
    assert torch.allclose(StainJitter(0.0)(x), x, atol=1e-5)  # unmix then mix: the identity
    torch.manual_seed(3)
    jitter = StainJitter(0.2)
    out = jitter(x)
    assert out.shape == x.shape and (out >= 0).all() and (out <= 1).all()
    assert not torch.allclose(out, x, atol=1e-3)
    # the change lives in stain space: unmixing both gives an affine map per stain channel
    hed_x = torch.einsum("chw,cd->dhw", -torch.log(x), jitter.hed_from_rgb)
    hed_o = torch.einsum("chw,cd->dhw", -torch.log(out.clamp(min=1e-6)), jitter.hed_from_rgb)
    for c in range(3):
        a = torch.stack([hed_x[c].flatten(), torch.ones(36)], 1)
        sol = torch.linalg.lstsq(a, hed_o[c].flatten()).solution
        assert torch.allclose(a @ sol, hed_o[c].flatten(), atol=1e-3)
        assert abs(sol[0].item() - 1) <= 0.2 + 1e-4


# --- training without a validation split ---------------------------------------------------------


def test_training_without_validation_keeps_the_last_epoch(tmp_path: Path) -> None:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("AAA", "BBB"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    cfg = load_config(
        None,
        [
            *TINY_MODEL,
            f"data.root={root}",
            "data.val_fraction=0",
            "sampler.p_classes=2",
            "sampler.k_per_class=2",
            "sampler.batches_per_epoch=2",
            "train.epochs=2",
            "train.proxy_weight=0.5",
        ],
    )
    summary = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    best, last = (
        json.loads((run / "best.json").read_text()),
        json.loads((run / "last.json").read_text()),
    )
    assert best["epoch"] == last["epoch"] == 2 and best["weights_sha256"] == last["weights_sha256"]
    assert "val" not in best and summary["n_val"] == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["train_proxy_ce"] > 0 for r in records)
    assert not (run / "val_metrics.json").exists()


# --- adapting the prototypes to the anchors ----------------------------------------------------


def test_adapted_prototypes_fit_the_anchors_better_and_zero_steps_are_the_means() -> None:
    from siamese_marrow.models.adapt import adapt_prototypes

    model = tiny(aggregate="proto")
    g = torch.Generator().manual_seed(5)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    labels = torch.arange(3).repeat_interleave(6)
    anchors = F.normalize(centres[labels] + 0.9 * torch.randn(18, 8, generator=g), dim=-1)
    plain, plain_labels = model.class_prototypes(anchors, labels, 3)
    same, _ = adapt_prototypes(model, anchors, labels, 3, steps=0)
    assert torch.equal(same, plain)
    adapted, adapted_labels = adapt_prototypes(model, anchors, labels, 3, steps=60)
    assert torch.equal(adapted_labels, plain_labels)
    assert torch.allclose(adapted.norm(dim=-1), torch.ones(3), atol=1e-5)

    def ce(protos: torch.Tensor) -> float:
        logits, _ = model.prototype_logits(protos, plain_labels, anchors)
        return F.cross_entropy(logits, labels).item()

    assert ce(adapted) < ce(plain) - 0.01  # the heads separate the anchors' classes better
    again, _ = adapt_prototypes(model, anchors, labels, 3, steps=60)
    assert torch.equal(again, adapted)  # deterministic
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
    g_ad, _, _ = model.anchor_consensus(
        anchors, labels, anchors, 3, prototypes=(adapted, plain_labels)
    )
    logits, _ = model.prototype_logits(adapted, plain_labels, anchors)
    assert torch.allclose(g_ad, torch.softmax(logits, -1), atol=1e-6)


# --- adapting the prototypes on the anchors' dihedral views (bank.adapt_on=views) -------------


def test_view_embeddings_are_each_views_own_and_their_mean_is_the_tta_embedding(
    tmp_path: Path,
) -> None:
    from siamese_marrow.data.transforms import eval_transform
    from siamese_marrow.models.embed import _ImageDataset, views_to_embeddings

    model = tiny()
    paths = random_pngs(tmp_path, 3, (36, 32), seed=1)
    views, _ = embed_paths(model, paths, views=True)
    assert views.shape == (3, 8, model.dim) and views.dtype == np.float32
    x = torch.stack([_ImageDataset(paths, eval_transform(model.backbone.spec))[i][0] for i in (2,)])
    with torch.no_grad():
        want = torch.cat([model.embed(v) for v in dihedral_views(x)]).numpy()  # (8, D)
    np.testing.assert_allclose(views[2], want, atol=1e-5)
    tta, _ = embed_paths(model, paths, tta=True)
    plain, _ = embed_paths(model, paths)
    np.testing.assert_allclose(views_to_embeddings(views, tta=True), tta, atol=1e-5)
    np.testing.assert_allclose(views_to_embeddings(views, tta=False), plain, atol=1e-5)


def test_adapting_on_views_is_the_loss_over_every_view() -> None:
    from siamese_marrow.models.adapt import adapt_prototypes

    model = tiny(aggregate="proto")
    g = torch.Generator().manual_seed(7)
    labels = torch.arange(3).repeat_interleave(2)
    views = F.normalize(torch.randn(6, 8, 8, generator=g), dim=-1)  # (N, 8 views, D)
    anchors = F.normalize(views.mean(1), dim=-1)
    # 8 identical views: the same mean loss and gradients as the anchors alone
    copies = anchors.unsqueeze(1).expand(-1, 8, -1)
    on_mean, _ = adapt_prototypes(model, anchors, labels, 3, steps=40)
    on_copies, _ = adapt_prototypes(model, anchors, labels, 3, steps=40, views=copies)
    assert torch.allclose(on_copies, on_mean, atol=1e-5)
    # real views: the prototypes move to fit the views, better than adapting on the means does
    on_views, lab = adapt_prototypes(model, anchors, labels, 3, steps=40, views=views)
    flat, flat_labels = views.reshape(-1, 8), labels.repeat_interleave(8)

    def ce(protos: torch.Tensor) -> float:
        logits, _ = model.prototype_logits(protos, lab, flat)
        return F.cross_entropy(logits, flat_labels).item()

    assert ce(on_views) < ce(on_mean) - 1e-3
    # start: the same class means; per_class counts anchors, each with all its views
    plain, _ = adapt_prototypes(model, anchors, labels, 3, steps=0, views=views)
    assert torch.equal(plain, model.class_prototypes(anchors, labels, 3)[0])
    # per_class counts rows: with 8 of a class's 16 rows a step, each step draws 8 afresh, so the
    # second anchor of each class takes part too (it did not when the first rows were kept)
    part, _ = adapt_prototypes(model, anchors, labels, 3, steps=40, views=views, per_class=8)
    again, _ = adapt_prototypes(model, anchors, labels, 3, steps=40, views=views, per_class=8)
    assert torch.equal(part, again)  # seeded draws: deterministic
    other = views.clone()
    other[[1, 3, 5]] = F.normalize(torch.randn(3, 8, 8, generator=g), dim=-1)
    moved, _ = adapt_prototypes(model, anchors, labels, 3, steps=40, views=other, per_class=8)
    assert not torch.allclose(part, moved, atol=1e-4)
    reseeded, _ = adapt_prototypes(model, anchors, labels, 3, 40, views=views, per_class=8, seed=1)
    assert not torch.equal(part, reseeded)
    assert not torch.allclose(part, on_views, atol=1e-3)
    with pytest.raises(ValueError, match="views"):
        adapt_prototypes(model, anchors, labels, 3, steps=5, views=views[:4])


def test_adaptation_draws_cover_every_row_of_a_large_class() -> None:
    """A class with more rows than per_class gives a fresh per_class of them at every step, each
    row as often as the others; a small class takes part whole; a huge one is pooled first."""
    from siamese_marrow.models.adapt import POOL, _Draw, _pools

    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 3 + [1] * 20 + [-1] * 2)
    pools = _pools(labels, 2, POOL * 5, gen)
    assert [p.tolist() for p in pools] == [[0, 1, 2], list(range(3, 23))]
    draw = _Draw(pools, 5, gen)
    counts = torch.zeros(23)
    for _ in range(400):
        rows = draw()
        assert rows is not None and len(rows) == 3 + 5
        assert rows[:3].tolist() == [0, 1, 2] and len(set(rows[3:].tolist())) == 5
        assert all(3 <= r < 23 for r in rows[3:].tolist())
        counts[rows] += 1
    assert torch.equal(counts[:3], torch.full((3,), 400.0))
    share = counts[3:] / 400  # 5 of 20 a step: 0.25 each
    assert share.min() > 0.17 and share.max() < 0.33
    assert _Draw(pools, 20, gen)() is None  # every class fits: the same rows every step
    big = _pools(torch.zeros(POOL * 5 + 30, dtype=torch.long), 1, POOL * 5, gen)[0]
    assert len(big) == POOL * 5 and len(set(big.tolist())) == POOL * 5


@pytest.mark.parametrize("kind", ["mlp", "linear", "mlp_sym"])
def test_prototype_scorer_equals_prototype_logits(kind: str) -> None:
    model = tiny(aggregate="proto", concat_head=kind)
    tests, protos = unit(11, 8, 1), unit(4, 8, 2)
    labels = torch.tensor([0, 1, -1, 3])  # a class without anchors stays -inf
    want, _ = model.prototype_logits(protos, labels, tests)
    score = model.prototype_scorer(tests)
    got = score(protos, labels)
    assert torch.allclose(got, want, atol=1e-6, equal_nan=False)
    assert torch.isinf(got[:, 2]).all()
    rows = torch.tensor([9, 0, 4, 4])  # some of the tests, in any order, repeated
    sub, _ = model.prototype_logits(protos, labels, tests[rows])
    assert torch.allclose(score(protos, labels, rows), sub, atol=1e-6)


# --- several prototypes a class (bank.prototypes_per_class) -----------------------------------


def two_looks(
    n_per_look: int, seed: int, noise: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors of 2 classes: class 0 has two looks (tight at the default ``noise``), class 1
    one. Returns anchors, labels and the three look centres (class 0's two, then class 1's)."""
    g = torch.Generator().manual_seed(seed)
    looks = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    which = torch.tensor([0] * n_per_look + [1] * n_per_look + [2] * n_per_look)
    anchors = F.normalize(looks[which] + noise * torch.randn(len(which), 8, generator=g), dim=-1)
    return anchors, (which == 2).long(), looks


def test_class_modes_are_the_kmeans_centres_of_each_look_and_one_keeps_the_means() -> None:
    from sklearn.cluster import KMeans

    from siamese_marrow.models.adapt import class_modes

    anchors, labels, looks = two_looks(12, 0)
    one, one_labels = class_modes(anchors, labels, 3, per_class=1)
    plain, plain_labels = tiny(aggregate="proto").class_prototypes(anchors, labels, 3)
    assert torch.equal(one, plain) and torch.equal(one_labels, plain_labels)
    protos, proto_labels = class_modes(anchors, labels, 3, per_class=2)
    # class 0 (24 anchors) gets 2 centres, class 1 (12 < 2 x 10) keeps its mean, class 2 has no
    # anchors: its row stays, label -1
    assert proto_labels.tolist() == [0, 0, 1, -1]
    km = KMeans(2, n_init=4, random_state=0).fit(anchors[labels == 0].numpy())
    want = F.normalize(torch.from_numpy(km.cluster_centers_).float(), dim=-1)
    assert torch.allclose(protos[:2], want, atol=1e-6)
    # ... which are the two looks (in some order), each near its look's centre
    near = (protos[:2] @ looks[:2].T).amax(0)
    assert (near > 0.99).all()
    assert torch.allclose(protos[2], plain[1], atol=1e-6)
    assert torch.allclose(protos.norm(dim=-1)[:3], torch.ones(3), atol=1e-5)
    # few anchors a class: nothing is split whatever per_class asks (a 5-shot support)
    few = torch.arange(3).repeat_interleave(5)
    five = unit(15, 8, 3)
    assert torch.equal(class_modes(five, few, 3, per_class=4)[0], class_modes(five, few, 3)[0])
    with pytest.raises(ValueError, match="prototypes_per_class=0"):
        class_modes(anchors, labels, 3, per_class=0)


def test_a_class_scores_its_best_prototype() -> None:
    model = tiny(aggregate="proto")
    tests, protos = unit(6, 8, 4), unit(5, 8, 5)
    labels = torch.tensor([0, 0, 1, 2, 2])
    logits, (h1, h2) = model.prototype_logits(protos, labels, tests, num_classes=3)
    assert logits.shape == (6, 3) and h1.shape == (6, 5)
    s = h1 + h2
    best = torch.stack([s[:, [0, 1]].amax(1), s[:, 2], s[:, [3, 4]].amax(1)], dim=1)
    assert torch.allclose(logits, best / model.consensus_head.tau, atol=1e-6)
    score = model.prototype_scorer(tests)
    assert torch.allclose(score(protos, labels, None, 3), logits, atol=1e-6)
    anchors = unit(3, 8, 6)
    g, _, _ = model.anchor_consensus(
        anchors, torch.arange(3), tests, 3, prototypes=(protos, labels)
    )
    assert g.shape == (6, 3)
    assert torch.allclose(g, torch.softmax(logits, -1), atol=1e-6)


def test_adapting_several_prototypes_a_class_moves_them_all_and_fits_better() -> None:
    from siamese_marrow.models.adapt import adapt_prototypes, class_modes

    model = tiny(aggregate="proto")
    anchors, labels, _ = two_looks(12, 1, noise=0.9)  # classes that overlap
    start, start_labels = class_modes(anchors, labels, 2, per_class=2)
    same, _ = adapt_prototypes(model, anchors, labels, 2, steps=0, prototypes_per_class=2)
    assert torch.equal(same, start)
    adapted, adapted_labels = adapt_prototypes(
        model, anchors, labels, 2, steps=60, prototypes_per_class=2
    )
    assert torch.equal(adapted_labels, start_labels) and adapted.shape == (3, 8)
    assert ((adapted - start).norm(dim=-1) > 1e-4).all()  # every prototype moved

    def ce(protos: torch.Tensor) -> float:
        logits, _ = model.prototype_logits(protos, start_labels, anchors, num_classes=2)
        return F.cross_entropy(logits, labels).item()

    assert ce(adapted) < ce(start) - 0.01
    again, _ = adapt_prototypes(model, anchors, labels, 2, steps=60, prototypes_per_class=2)
    assert torch.equal(again, adapted)  # deterministic
