"""Few-shot episodes: sampler counts, determinism, refusals, and the three methods by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from siamese_marrow.config import ModelConfig
from siamese_marrow.engine.fewshot import (
    Episode,
    EpisodeSampler,
    episode_predictions,
    fewshot_eval,
    fewshot_evaluate,
    mean_ci,
)
from siamese_marrow.errors import ConfigError, DataError
from siamese_marrow.models import build_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

LABELS = np.repeat(np.arange(6), [10, 12, 8, 9, 15, 7])


def tiny_model(dim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="test_efficientnet", pretrained="none", embed_dim=dim, img_size=32)
    ).eval()
    with torch.no_grad():  # h1 constant: g ranks classes by the Hadamard gate sigmoid(10 cos - 5)
        model.head_concat.out.weight.zero_()
    return model


def test_episode_counts() -> None:
    sampler = EpisodeSampler(LABELS, n_way=4, k_shot=2, n_query=3, episodes=5, seed=1)
    for ep in sampler:
        assert len(set(ep.classes.tolist())) == 4
        assert np.bincount(ep.support_labels).tolist() == [2] * 4
        assert np.bincount(ep.query_labels).tolist() == [3] * 4
        assert not set(ep.support) & set(ep.query)
        assert (LABELS[ep.support] == ep.classes[ep.support_labels]).all()
        assert (LABELS[ep.query] == ep.classes[ep.query_labels]).all()


def test_episodes_are_deterministic_by_seed() -> None:
    def draw(seed: int) -> list[list[int]]:
        s = EpisodeSampler(LABELS, 3, 1, 2, episodes=4, seed=seed)
        return [np.concatenate([e.support, e.query]).tolist() for e in s]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    # episode e does not depend on how many episodes are drawn
    assert EpisodeSampler(LABELS, 3, 1, 2, 10, 7).episode(2).query.tolist() == draw(7)[2][3:]


def test_too_few_images_are_refused_with_the_numbers() -> None:
    with pytest.raises(DataError, match=r"C2 has 8, C5 has 7 image\(s\).*5 \+ 4 = 9"):
        EpisodeSampler(LABELS, 3, 5, 4, 10, class_names=[f"C{i}" for i in range(6)])
    with pytest.raises(DataError, match="n_way=7 but the data hold only 6 classes"):
        EpisodeSampler(LABELS, 7, 1, 1, 10)


def angles(deg: list[float]) -> torch.Tensor:
    a = np.deg2rad(np.array(deg))
    return torch.tensor(np.stack([np.cos(a), np.sin(a)], 1), dtype=torch.float32)


def test_methods_worked_out_by_hand() -> None:
    # support: class 0 at 0 and 80 degrees, class 1 at 50 and 55; query at 70 degrees.
    # 1-NN: nearest support is 80 (class 0, 10 deg away; 55 is 15 away)           -> 0
    # prototype: class means point at 40 and 52.5 degrees; 52.5 is nearer          -> 1
    # siamese (h1 constant, h2 = sigmoid(10 cos - 5), class mean of both anchors):
    #   class 0: (sigmoid(10 cos 70 - 5) + sigmoid(10 cos 10 - 5)) / 2 = (0.171 + 0.992) / 2
    #   class 1: (sigmoid(10 cos 20 - 5) + sigmoid(10 cos 15 - 5)) / 2 = (0.988 + 0.991) / 2 -> 1
    model = tiny_model(2)
    emb = angles([0, 80, 50, 55, 70])
    ep = Episode(
        classes=np.array([0, 1]),
        support=np.array([0, 1, 2, 3]),
        support_labels=np.array([0, 0, 1, 1]),
        query=np.array([4]),
        query_labels=np.array([1]),
    )
    preds = episode_predictions(model, emb, ep, 2)
    assert preds["nn1"].tolist() == [0]
    assert preds["prototype"].tolist() == [1]
    assert preds["siamese"].tolist() == [1]


def test_logistic_is_logistic_regression_on_the_episode_support() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    emb = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    ep = EpisodeSampler(LABELS[:30] % 3, 3, 3, 4, 1, seed=2).episode(0)
    preds = episode_predictions(None, emb, ep, 3)
    s = emb.numpy()[ep.support]
    oracle = LogisticRegression(C=10.0, max_iter=1000).fit(s, ep.support_labels)
    assert preds["logistic"].tolist() == oracle.predict(emb.numpy()[ep.query]).tolist()
    assert "siamese" not in preds


def test_evaluate_shape_ci_and_determinism() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8)) * 4
    x = centres[LABELS] + rng.standard_normal((len(LABELS), 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    model = tiny_model(8)
    out = fewshot_evaluate(model, x, LABELS, n_way=3, k_shots=[1, 5], n_query=2, episodes=6)
    assert out["n_way"] == 3 and out["episodes"] == 6
    assert set(out["results"]) == {"siamese", "prototype", "nn1", "logistic"}
    baselines = fewshot_evaluate(None, x, LABELS, n_way=3, k_shots=[1, 5], n_query=2, episodes=6)
    assert set(baselines["results"]) == {"prototype", "nn1", "logistic"}
    assert baselines["results"]["prototype"] == out["results"]["prototype"]  # same episodes
    for per_k in out["results"].values():
        assert set(per_k) == {"1", "5"}
        for v in per_k.values():
            assert set(v) == {"mean", "ci95"} and 0 <= v["mean"] <= 1 and v["ci95"] >= 0
    assert out["results"]["prototype"]["5"]["mean"] == 1.0  # well separated clusters
    again = fewshot_evaluate(model, x, LABELS, n_way=3, k_shots=[1, 5], n_query=2, episodes=6)
    assert again == out


def test_mean_ci() -> None:
    m = mean_ci([0.5, 1.0, 0.75, 0.75])
    assert m["mean"] == pytest.approx(0.75)
    assert m["ci95"] == pytest.approx(1.96 * np.std([0.5, 1.0, 0.75, 0.75]) / 2)


@pytest.mark.skipif(not (DATA / "pbc8").is_dir(), reason=f"real images not found at {DATA}/pbc8")
def test_fewshot_eval_on_real_images(tmp_path) -> None:
    from siamese_marrow.config import Config
    from siamese_marrow.models.checkpoint import save_checkpoint

    cfg = Config()
    cfg.model = ModelConfig(
        backbone="test_efficientnet", pretrained="none", embed_dim=8, img_size=32
    )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", "best", build_model(cfg.model), cfg, ["x"])
    data = tmp_path / "data"
    for c in ("basophil", "platelet", "lymphocyte"):
        (data / c).mkdir(parents=True)
        for f in sorted((DATA / "pbc8" / c).glob("*.jpg"))[:8]:
            (data / c / f.name).symlink_to(f)
    out = fewshot_eval(tmp_path / "run", data, 3, [1, 2], 3, episodes=4, seed=0)
    assert out["n_way"] == 3 and out["episodes"] == 4 and out["num_images"] == 24
    assert set(out["results"]["nn1"]) == {"1", "2"}
    with pytest.raises(DataError, match=r"has 8 image\(s\).*6 \+ 3 = 9"):
        fewshot_eval(tmp_path / "run", data, 3, [1, 6], 3, episodes=4)
    # a prototype model adapting on the support's views: embedded once, views and TTA mean
    cfg.model.aggregate = "proto"
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "proto", "best", build_model(cfg.model), cfg, ["x"])
    kw = dict(episodes=4, seed=0, tta=True, adapt_steps=5)
    views = fewshot_eval(tmp_path / "proto", data, 3, [2], 3, adapt_on="views", **kw)
    mean = fewshot_eval(tmp_path / "proto", data, 3, [2], 3, adapt_on="mean", **kw)
    assert views["adapt_on"] == "views" and mean["adapt_on"] == "mean"
    assert views["adapt_lr"] == cfg.bank.adapt_lr
    assert fewshot_eval(tmp_path / "proto", data, 3, [2], 3, adapt_lr=0.1, **kw)["adapt_lr"] == 0.1
    with pytest.raises(ConfigError, match=r"bank\.adapt_lr=0\.0 must be > 0"):
        fewshot_eval(tmp_path / "proto", data, 3, [2], 3, adapt_lr=0, **kw)
    with pytest.raises(ConfigError, match=r"bank\.adapt_steps=-1 must be >= 0"):
        fewshot_eval(tmp_path / "proto", data, 3, [2], 3, **{**kw, "adapt_steps": -1})
    for m in ("prototype", "nn1"):  # the same embeddings: the TTA mean of the same views
        assert views["results"][m] == mean["results"][m]
    with pytest.raises(ConfigError, match="bank.adapt_on: 'sideways' is not one of mean, views"):
        fewshot_eval(tmp_path / "proto", data, 3, [2], 3, adapt_on="sideways", **kw)


def test_adapting_on_the_support_views() -> None:
    """views (N, 8, D): the consensus adapts the prototypes on the support's 8 views each."""
    from siamese_marrow.models.adapt import adapt_prototypes

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            backbone="test_efficientnet",
            pretrained="none",
            embed_dim=8,
            img_size=32,
            aggregate="proto",
        )
    ).eval()
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 8)) * 2
    views = centres[LABELS][:, None] + rng.standard_normal((len(LABELS), 8, 8))
    views = (views / np.linalg.norm(views, axis=-1, keepdims=True)).astype(np.float32)
    mean = views.mean(1)
    emb = torch.from_numpy(mean / np.linalg.norm(mean, axis=1, keepdims=True))
    vw = torch.from_numpy(views)
    ep = EpisodeSampler(LABELS, 3, 2, 3, 1, seed=1).episode(0)
    got = episode_predictions(model, emb, ep, 3, adapt_steps=30, views=vw)["siamese"]
    s, q = emb[ep.support], emb[ep.query]
    lab = torch.from_numpy(ep.support_labels)
    protos = adapt_prototypes(model, s, lab, 3, steps=30, views=vw[ep.support])
    g, _, _ = model.anchor_consensus(s, lab, q, 3, prototypes=protos)
    assert got.tolist() == g.argmax(1).tolist()
    # adapt_lr: the same steps at another Adam learning rate
    got = episode_predictions(model, emb, ep, 3, adapt_steps=30, views=vw, adapt_lr=0.3)
    protos_fast = adapt_prototypes(model, s, lab, 3, steps=30, lr=0.3, views=vw[ep.support])
    assert not torch.allclose(protos_fast[0], protos[0], atol=1e-3)
    g, _, _ = model.anchor_consensus(s, lab, q, 3, prototypes=protos_fast)
    assert got["siamese"].tolist() == g.argmax(1).tolist()
    on_views = fewshot_evaluate(
        model, emb.numpy(), LABELS, 3, [2], 3, episodes=4, adapt_steps=30, views=views
    )
    on_mean = fewshot_evaluate(model, emb.numpy(), LABELS, 3, [2], 3, episodes=4, adapt_steps=30)
    assert on_views["adapt_on"] == "views" and on_mean["adapt_on"] == "mean"
    assert on_views["results"]["prototype"] == on_mean["results"]["prototype"]
    with pytest.raises(ValueError, match="views"):
        fewshot_evaluate(model, emb.numpy(), LABELS, 3, [2], 3, episodes=4, views=views[:5])
