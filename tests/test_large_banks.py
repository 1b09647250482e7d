"""Large banks (issue 13): the auto index rule at its boundaries, tuning to a recall target, the
class-balanced shortlist against the exact consensus, float16 embeddings and older bank files.
All on small data: the rule is a pure function of (anchors, dim, budget), and the thresholds are
lowered where a bank has to cross one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bank import make_run

from siamese_marrow.config import BankConfig, ConfigError, load_config, parse_size
from siamese_marrow.index import AnchorBank, BankError, FaissIndex, search
from siamese_marrow.index import auto as auto_mod
from siamese_marrow.index import shortlist as shortlist_mod
from siamese_marrow.index.auto import EXACT_UP_TO, FLOAT16_FROM, choose_index, tune
from siamese_marrow.index.shortlist import Shortlist, class_members, cosines
from siamese_marrow.models.checkpoint import load_run


def cfg(**kw: object) -> BankConfig:
    return BankConfig(**kw)


def test_parse_size() -> None:
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MB") == 512 * 10**6
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1.5g") == 1_500_000_000
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="memory_budget"):
        load_config(None, ["bank.memory_budget=0GB"])


def test_choice_rule_boundaries() -> None:
    assert choose_index(0, 256, cfg()).factory == "Flat"
    assert choose_index(EXACT_UP_TO, 256, cfg()).factory == "Flat"
    above = choose_index(EXACT_UP_TO + 1, 256, cfg())
    assert above.factory.startswith("IVF") and above.factory.endswith(",Flat")
    # HNSW only when anchors need not be removable in place
    assert choose_index(EXACT_UP_TO + 1, 256, cfg(removable=False)).factory == "HNSW32"
    # float16 embeddings from FLOAT16_FROM: the index is stored at that precision too
    assert choose_index(FLOAT16_FROM - 1, 256, cfg()).factory.endswith(",Flat")
    assert choose_index(FLOAT16_FROM, 256, cfg()).factory.endswith(",SQfp16")
    # one million of dim 256: SQfp16 in 2 GB, SQ8 in 1 GB, product quantization in 700 MB
    big = choose_index(10**6, 256, cfg(memory_budget="2GB"))
    assert big.factory == "IVF4096,SQfp16" and big.total_bytes <= 2 * 10**9
    assert choose_index(10**6, 256, cfg(memory_budget="1GB")).factory == "IVF4096,SQ8"
    pq = choose_index(10**6, 256, cfg(memory_budget="700MB"))
    assert pq.factory.startswith("OPQ") and ",PQ" in pq.factory and pq.total_bytes <= 7 * 10**8
    with pytest.raises(BankError, match=r"too small .* raise bank.memory_budget"):
        choose_index(10**6, 256, cfg(memory_budget="100MB"))
    # a budget that exact search exceeds is not given exact search, however few anchors
    assert choose_index(40_000, 256, cfg(memory_budget="50MB")).factory != "Flat"


def clustered(sizes: list[int], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim)) * 0.6
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[y] + rng.standard_normal((len(y), dim)) * 0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_tune_reaches_the_target() -> None:
    x, _ = clustered([1500] * 4, 16, seed=1)
    ids = np.arange(len(x)) * 3
    index = auto_mod.build_index("IVF64,Flat", x, ids)
    params, recall, used = tune(index, x, ids, 0.95)
    assert recall >= 0.95 and used == 200 and index.nprobe == params["nprobe"] <= 64
    assert tune(FaissIndex(16, "Flat"), x, ids, 0.95) == ({}, None, 0)


def mean_topk(q: np.ndarray, x: np.ndarray, y: np.ndarray, rows: np.ndarray, c: int, k: int):
    """Per-class mean cosine of each class's best k candidates, ``(B, C)``."""
    cos, lab = cosines(q, x, rows), np.where(rows >= 0, y[rows.clip(0)], -1)
    out = np.full((len(q), c), -np.inf)
    for j in range(c):
        s = -np.sort(-np.where(lab == j, cos, -np.inf), axis=1)[:, :k]
        ok = np.isfinite(s)
        out[:, j] = np.where(ok, s, 0).sum(1) / ok.sum(1).clip(1)
    return out


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQfp16", "Flat"])
def test_balanced_shortlist_agrees_with_the_exact_consensus(monkeypatch, factory) -> None:
    """Class sizes 40..4000 (100-fold): the consensus over the shortlist picks the same class as
    the consensus over all anchors on >= 99% of queries, and every class is scored on exactly
    min(k, size) of its anchors, whatever its size."""
    monkeypatch.setattr(shortlist_mod, "EXACT_CLASS_UP_TO", 500)  # big classes go through IVF
    sizes, k = [4000, 2000, 800, 300, 100, 40], 5
    x, y = clustered(sizes, 16, seed=2)
    q, _ = clustered([50] * len(sizes), 16, seed=3)
    ids = np.arange(len(x), dtype=np.int64)
    index = auto_mod.build_index(factory, x, ids)
    if index.kind == "ivf":
        tune(index, x, ids, 0.95)
    sl = Shortlist(index, x, y, ids, len(sizes), k)
    _, top = index.search(q, 64)
    rows = sl.candidates(q, top)
    lab = np.where(rows >= 0, y[rows.clip(0)], -1)
    for c, n in enumerate(sizes):
        assert ((lab == c).sum(1) == min(k, n)).all()  # balanced: no class gets more
    every = np.broadcast_to(np.arange(len(x)), (len(q), len(x)))
    exact = mean_topk(q, x, y, every, len(sizes), k).argmax(1)
    got = mean_topk(q, x, y, rows, len(sizes), k).argmax(1)
    assert (got == exact).mean() >= 0.99
    # a class the bound ruled out (searched cheaply) is never the exact winner
    assert not sl.pruned[np.arange(len(q)), exact].any()
    if index.kind == "ivf":  # the bound did rule some out, and only big classes
        assert sl.pruned.any() and not sl.pruned[:, 3:].any()
    # the unbalanced top-M shortlist gives a big class more candidates than a small one
    rows_m = Shortlist(index, x, y, ids, len(sizes), k, balanced=False).candidates(q, top)
    lab_m = np.where(rows_m >= 0, y[rows_m.clip(0)], -1)
    assert (lab_m == 0).sum(1).max() > k


def test_best_class_missing_from_the_top_m_gets_its_exact_nearest(monkeypatch) -> None:
    """With a top-M too short to hold k anchors of any class, the bound (top-M cosines plus the
    M-th cosine for the missing ones) keeps the winning big class in the precise search, which
    (all lists probed) returns exactly its k nearest anchors."""
    monkeypatch.setattr(shortlist_mod, "EXACT_CLASS_UP_TO", 500)
    sizes, k = [4000, 2000, 800, 300, 100, 40], 5
    x, y = clustered(sizes, 16, seed=2)
    q, _ = clustered([10] * len(sizes), 16, seed=7)
    ids = np.arange(len(x), dtype=np.int64)
    index = auto_mod.build_index("IVF64,Flat", x, ids)
    index.nprobe = 64
    _, top = index.search(q, 3)  # < k of every class
    sl = Shortlist(index, x, y, ids, len(sizes), k)
    rows = sl.candidates(q, top)
    every = np.broadcast_to(np.arange(len(x)), (len(q), len(x)))
    exact = mean_topk(q, x, y, every, len(sizes), k).argmax(1)
    assert (mean_topk(q, x, y, rows, len(sizes), k).argmax(1) == exact).all()
    sims = q @ x.T
    for i, c in enumerate(exact):
        nearest = np.flatnonzero(y == c)[np.argsort(-sims[i, y == c])[:k]]
        assert set(rows[i][rows[i] >= 0][y[rows[i][rows[i] >= 0]] == c]) == set(nearest)
    assert sl.searched["precise"] >= len(q) and not sl.pruned[np.arange(len(q)), exact].any()


def test_selectors_admit_exactly_their_ids() -> None:
    small, huge = np.array([3, 17, 100, 5]), np.array([10**12, 4])
    assert type(FaissIndex.selector(small)).__name__ == "IDSelectorBitmap"
    assert type(FaissIndex.selector(huge)).__name__ == "IDSelectorBatch"
    for ids in (small, huge):
        sel = FaissIndex.selector(ids)
        probe = np.concatenate([np.arange(120), [10**12, 10**12 + 1]])
        assert {int(i) for i in probe if sel.is_member(int(i))} == {int(i) for i in ids}


def test_class_members_and_mean_is_size_blind() -> None:
    """Adding far-away anchors to a class leaves its balanced shortlist (and so its mean
    aggregate) unchanged."""
    x, y = clustered([30, 30], 8, seed=4)
    far = -x[: 200 % len(x)][:20]  # the opposite directions: never among the nearest
    q = x[:5] * 0.9 + x[40:45] * 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(len(x))
    a = Shortlist(None, x, y, ids, 2, 5).candidates(q, np.full((5, 0), -1))
    x2, y2 = np.concatenate([x, far]), np.concatenate([y, np.zeros(len(far), int)])
    b = Shortlist(None, x2, y2, np.arange(len(x2)), 2, 5).candidates(q, np.full((5, 0), -1))
    assert np.array_equal(np.sort(a, 1), np.sort(b, 1))
    assert [len(m) for m in class_members(y2, 2)] == [50, 30]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_auto_bank_rechooses_as_it_grows(run_dir, tmp_path, monkeypatch) -> None:
    """An auto bank starts exact, becomes IVF past the threshold (float16 past the other), saves
    its choice with the measured recall, loads it back, and removes a class in place."""
    monkeypatch.setattr(auto_mod, "EXACT_UP_TO", 300)
    monkeypatch.setattr(auto_mod, "FLOAT16_FROM", 1000)
    x, y = clustered([700, 500, 300, 100], 16, seed=5)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    paths, labels = [f"/f/{i}.png" for i in range(len(x))], [f"C{c}" for c in y]
    bank = AnchorBank(load_run(run_dir))
    assert bank.requested == "auto"
    bank.add_embeddings(x[:200], paths[:200], labels[:200])
    assert bank.factory == "Flat" and bank.choice.num_anchors == 200
    bank.add_embeddings(x[200:350], paths[200:350], labels[200:350])
    assert bank.factory == "Flat"  # grown by less than rechoose_factor: no new choice
    bank.add_embeddings(x[350:], paths[350:], labels[350:])
    assert bank.factory.startswith("IVF") and bank.factory.endswith("SQfp16")
    assert bank.embeddings.dtype == np.float16 and bank.choice.recall >= 0.95
    bank.save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["index_requested"] == "auto"
    assert manifest["index_choice"]["factory"] == bank.factory
    assert manifest["search_params"] == bank.index.search_params
    loaded = AnchorBank.load(tmp_path / "bank", load_run(run_dir))
    assert loaded.embeddings.dtype == np.float16 and loaded.requested == "auto"
    assert loaded.index.search_params == bank.index.search_params
    assert loaded.remove("C3") == 100 and loaded.index.ntotal == len(loaded) == 1500
    hits = search(loaded, x[y == 3][:2], 10)
    assert all(h["label"] != "C3" for row in hits for h in row)


def test_explicit_factory_and_version_1_banks_still_load(run_dir, tmp_path) -> None:
    x, y = clustered([40, 40], 16, seed=6)
    bank = AnchorBank(load_run(run_dir), "HNSW32")
    bank.add_embeddings(x, [f"/g/{i}" for i in range(80)], [f"C{c}" for c in y])
    assert bank.factory == bank.requested == "HNSW32" and bank.choice is None
    bank.save(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    m = json.loads(path.read_text())  # as version 1 wrote it
    for key in ("index_requested", "index_choice", "search_params", "embeddings_dtype"):
        del m[key]
    m["format_version"] = 1
    m["bank_config"] = {k: v for k, v in m["bank_config"].items() if k in ("index", "top_m")}
    path.write_text(json.dumps(m))
    old = AnchorBank.load(tmp_path / "b", load_run(run_dir))
    assert old.factory == old.requested == "HNSW32" and old.embeddings.dtype == np.float32
    assert old.remove("C1") == 40 and len(old.index.ids()) == 40
