"""N-way K-shot episodes on precomputed embeddings: Siamese consensus, prototypes and 1-NN.

Every image is embedded once (no augmentation); each episode draws its support and query sets
from those embeddings, so the three methods are compared on exactly the same vectors:

- ``siamese``: the support images are the anchors; the pair heads score every query against
  every support image and ``model.consensus`` turns the scores into class probabilities g;
- ``prototype``: cosine similarity to the class mean of the support embeddings (ProtoNet);
- ``nn1``: the class of the most cosine-similar support image;
- ``logistic``: logistic regression fitted on the support embeddings (a strong few-shot
  baseline: Tian et al. 2020).

Accuracy is averaged over episodes; ``ci95 = 1.96 * std / sqrt(E)`` (population std over the E
episode accuracies, as is usual in the few-shot literature).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import BankConfig, overridden
from ..data.datasets import class_list, load_samples
from ..errors import DataError
from ..models import SiameseNet
from ..models.adapt import adapt_prototypes
from ..models.checkpoint import load_run
from ..models.embed import embed_paths_and_views

METHODS = ("siamese", "prototype", "nn1", "logistic")


@dataclass(frozen=True)
class Episode:
    """Indices into the dataset and episode-local labels ``0..N-1``.

    ``support (N*K,)``, ``support_labels (N*K,)``, ``query (N*Q,)``, ``query_labels (N*Q,)``;
    ``classes (N,)`` the dataset labels of the N episode classes.
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


class EpisodeSampler:
    """Seeded N-way K-shot episodes that need only the labels (no image is loaded).

    Episode ``e`` is drawn with ``numpy.random.default_rng([seed, e])``, so it does not depend on
    how many episodes are drawn or in what order.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        n_way: int,
        k_shot: int,
        n_query: int,
        episodes: int,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if n_way < 2 or k_shot < 1 or n_query < 1 or episodes < 1:
            raise DataError(
                f"n_way={n_way}, k_shot={k_shot}, n_query={n_query}, episodes={episodes}: "
                "need n_way >= 2 and k_shot, n_query, episodes >= 1"
            )
        classes, counts = np.unique(labels, return_counts=True)
        name = (lambda c: class_names[c]) if class_names is not None else str  # noqa: E731
        need = k_shot + n_query
        short = [(name(int(c)), int(n)) for c, n in zip(classes, counts, strict=True) if n < need]
        if short:
            listed = ", ".join(f"{c} has {n}" for c, n in short)
            raise DataError(
                f"{listed} image(s); {k_shot}-shot episodes with {n_query} queries per class need "
                f"at least {k_shot} + {n_query} = {need} images in every class: lower --k-shot or "
                "--n-query, or leave those classes out"
            )
        if n_way > len(classes):
            raise DataError(f"n_way={n_way} but the data hold only {len(classes)} classes")
        self.labels = labels
        self.classes = classes
        self.members = {int(c): np.flatnonzero(labels == c) for c in classes}
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.episodes, self.seed = episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def episode(self, e: int) -> Episode:
        rng = np.random.default_rng([self.seed, e])
        chosen = rng.choice(self.classes, size=self.n_way, replace=False)
        sup, qry = [], []
        for c in chosen:
            pick = rng.choice(self.members[int(c)], size=self.k_shot + self.n_query, replace=False)
            sup.append(pick[: self.k_shot])
            qry.append(pick[self.k_shot :])
        way = np.arange(self.n_way)
        return Episode(
            chosen.astype(np.int64),
            np.concatenate(sup),
            np.repeat(way, self.k_shot),
            np.concatenate(qry),
            np.repeat(way, self.n_query),
        )

    def __iter__(self) -> Iterator[Episode]:
        for e in range(self.episodes):
            yield self.episode(e)


def centre_on(reference: torch.Tensor, *xs: torch.Tensor) -> list[torch.Tensor]:
    """SimpleShot's centring: subtract the mean of ``reference (S, D)`` from each of ``xs`` and
    renormalise. With the support set (an episode's, a bank's anchors) as the reference it needs
    no query, so it is not transductive."""
    mu = reference.mean(0, keepdim=True)
    return [F.normalize(x - mu, dim=-1) for x in xs]


@torch.no_grad()
def episode_predictions(
    model: SiameseNet | None,
    embeddings: torch.Tensor,
    ep: Episode,
    n_way: int,
    centre: bool = False,
    adapt_steps: int = 0,
    views: torch.Tensor | None = None,
    adapt_lr: float = BankConfig.adapt_lr,
) -> dict[str, torch.Tensor]:
    """Predicted episode labels ``(N*Q,)`` of each method; ``embeddings (N_all, D)`` unit-norm.
    Without a model only the prototype and 1-NN baselines; ``centre``: every method on the
    embeddings centred on the episode's support mean (:func:`centre_on`); ``adapt_steps``: with
    prototype aggregation, the consensus over prototypes adapted to the support set (over the
    support's dihedral views ``views (N_all, 8, D)`` when given: ``bank.adapt_on=views``) at the
    Adam learning rate ``adapt_lr``."""
    device = embeddings.device
    sup = torch.from_numpy(ep.support).to(device)
    s = embeddings[sup]  # (S, D)
    q = embeddings[torch.from_numpy(ep.query).to(device)]  # (Q, D)
    s_views = views[sup] if views is not None else None  # (S, 8, D)
    if centre:
        if s_views is not None:
            (s_views,) = centre_on(s, s_views)
        s, q = centre_on(s, s, q)
    s_lab = torch.from_numpy(ep.support_labels).to(device)
    onehot = F.one_hot(s_lab, n_way).to(s.dtype)  # (S, N)
    protos = F.normalize(onehot.T @ s / onehot.sum(0)[:, None], dim=-1)  # (N, D)
    cos = q @ s.T  # (Q, S)
    out = {
        "prototype": (q @ protos.T).argmax(1),
        "nn1": s_lab[cos.argmax(1)],
        "logistic": _support_logistic(s, s_lab, q),
    }
    if model is not None:
        adapted = None
        if model.uses_prototypes and adapt_steps > 0:
            adapted = adapt_prototypes(
                model, s, s_lab, n_way, steps=adapt_steps, lr=adapt_lr, views=s_views
            )
        g, _, _ = model.anchor_consensus(s, s_lab, q, n_way, prototypes=adapted)  # (Q, N)
        out["siamese"] = g.argmax(1)
    return out


def _support_logistic(s: torch.Tensor, s_lab: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Labels of ``q`` by multinomial logistic regression on the unit-norm support rows."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=1000)
    clf.fit(s.cpu().numpy(), s_lab.cpu().numpy())
    return torch.from_numpy(clf.predict(q.cpu().numpy())).to(q.device)


def mean_ci(accuracies: Sequence[float]) -> dict[str, float]:
    """``{"mean", "ci95"}`` of episode accuracies; ci95 = 1.96 * std / sqrt(E)."""
    a = np.asarray(accuracies, dtype=np.float64)
    return {"mean": float(a.mean()), "ci95": float(1.96 * a.std() / np.sqrt(len(a)))}


def fewshot_evaluate(
    model: SiameseNet | None,
    embeddings: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_way: int,
    k_shots: Sequence[int],
    n_query: int,
    episodes: int,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    centre: bool = False,
    adapt_steps: int = 0,
    views: np.ndarray | None = None,
    adapt_lr: float = BankConfig.adapt_lr,
) -> dict[str, Any]:
    """Mean accuracy and 95% CI of each method for each K, on embeddings ``(N_all, D)``
    (``views (N_all, 8, D)``: the prototypes adapted on the support's views, see
    :func:`episode_predictions`).

    Returns ``{"n_way", "n_query", "episodes", "seed", "centre", "results": {method: {str(K):
    {"mean", "ci95"}}}}``. Every K is checked against the class sizes before any episode runs.
    Without a ``model``, the prototype and 1-NN baselines only (any embedding).
    """
    samplers = {
        k: EpisodeSampler(labels, n_way, k, n_query, episodes, seed, class_names) for k in k_shots
    }
    methods = METHODS if model is not None else METHODS[1:]
    was_training = model.training if model is not None else False
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    if model is not None:
        model.eval()
    emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    if views is not None and (views.ndim != 3 or len(views) != len(emb)):
        raise ValueError(f"views {views.shape} for {len(emb)} embeddings; expected (N, 8, D)")
    vw = None if views is None else torch.from_numpy(np.asarray(views, np.float32)).to(device)
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    for k, sampler in samplers.items():
        accs: dict[str, list[float]] = {m: [] for m in methods}
        for ep in sampler:
            preds = episode_predictions(model, emb, ep, n_way, centre, adapt_steps, vw, adapt_lr)
            truth = torch.from_numpy(ep.query_labels).to(device)
            for m in methods:
                accs[m].append(float((preds[m] == truth).float().mean()))
        for m in methods:
            results[m][str(k)] = mean_ci(accs[m])
    if model is not None:
        model.train(was_training)
    return {
        "n_way": n_way,
        "n_query": n_query,
        "episodes": episodes,
        "seed": seed,
        "centre": centre,
        "adapt_steps": adapt_steps,
        "adapt_lr": adapt_lr,
        "adapt_on": "views" if views is not None else "mean",
        "results": results,
    }


def _bank_options(
    bank: BankConfig,
    tta: bool | None,
    adapt_steps: int | None,
    adapt_on: str | None,
    adapt_lr: float | None,
) -> tuple[bool, int, str, float]:
    """The few-shot options, each ``None`` replaced by the run's ``bank`` setting, checked as a
    config file's ``bank.*`` keys are."""
    bank = overridden(
        bank, "bank", tta=tta, adapt_steps=adapt_steps, adapt_on=adapt_on, adapt_lr=adapt_lr
    )
    return bank.tta, bank.adapt_steps, bank.adapt_on, bank.adapt_lr


def fewshot_eval(
    run: str | Path,
    data: str | Path,
    n_way: int,
    k_shots: Sequence[int],
    n_query: int,
    episodes: int,
    seed: int = 0,
    *,
    checkpoint: str = "best",
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
    tta: bool | None = None,
    centre: bool = False,
    adapt_steps: int | None = None,
    adapt_on: str | None = None,
    adapt_lr: float | None = None,
) -> dict[str, Any]:
    """Few-shot accuracy of the run's model on the classes of ``data`` (often unseen ones).
    Each of these defaults to the run's ``bank`` setting of the same name: ``tta``, each image
    embedded as the mean of its 8 dihedral views; ``adapt_steps``, the consensus over
    prototypes adapted to each support set; ``adapt_on``, ``"mean"`` or ``"views"``, what they
    are adapted on; ``adapt_lr``, their Adam learning rate. ``centre``: embeddings centred on
    each episode's support mean.

    ``{"n_way", "episodes", "results": {"siamese"|"prototype"|"nn1": {"<K>": {"mean", "ci95"}}},
    ...}``; each image is embedded once and reused by every episode and method.
    """
    loaded = load_run(run, checkpoint, device=device)
    tta, adapt_steps, adapt_on, adapt_lr = _bank_options(
        loaded.cfg.bank, tta, adapt_steps, adapt_on, adapt_lr
    )
    on_views = adapt_on == "views" and adapt_steps > 0 and loaded.model.uses_prototypes
    samples = load_samples(data, classes)
    names = class_list(samples)
    lookup = {c: i for i, c in enumerate(names)}
    labels = [lookup[s.label] for s in samples]
    # check the request against the class sizes before embedding anything
    for k in k_shots:
        EpisodeSampler(labels, n_way, k, n_query, episodes, seed, names)
    emb, views, timing = embed_paths_and_views(
        loaded.model,
        [s.path for s in samples],
        batch_size,
        num_workers,
        progress,
        desc="fewshot",
        tta=tta,
        views=on_views,
    )
    out = fewshot_evaluate(
        loaded.model,
        emb,
        labels,
        n_way,
        k_shots,
        n_query,
        episodes,
        seed,
        names,
        centre,
        adapt_steps,
        views,
        adapt_lr,
    )
    out.update(
        {
            "k_shots": [int(k) for k in k_shots],
            "run": str(loaded.run),
            "data": str(data),
            "num_images": len(samples),
            "tta": tta,
            "classes": names,
            "embed_seconds": round(timing["total_s"], 3),
        }
    )
    return out
