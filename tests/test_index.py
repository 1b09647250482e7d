"""FaissIndex against brute force on small seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from siamese_marrow.errors import SiameseMarrowError
from siamese_marrow.index.faiss_index import (
    FaissIndex,
    FaissIndexError,
    IndexTrainingError,
    RemoveUnsupported,
    min_train_size,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return unit(c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d)))


def brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


X = clustered(2000, 32, 20, seed=0)
Q = clustered(50, 32, 20, seed=1)


def test_flat_equals_brute_force() -> None:
    index = FaissIndex(32, "Flat")
    ids = index.add(X)
    assert np.array_equal(ids, np.arange(len(X)))
    sims, found = index.search(Q, 10)
    ref_s, ref_i = brute(X, Q, 10)
    assert sims.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, 10)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert np.array_equal(found, ref_i)


def test_caller_ids_are_returned() -> None:
    index = FaissIndex(32, "Flat")
    index.add(X[:100], np.arange(100) * 7 + 1000)
    _, found = index.search(X[:5], 1)
    assert found[:, 0].tolist() == [1000, 1007, 1014, 1021, 1028]


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_approximate_recall_is_high(factory: str) -> None:
    index = FaissIndex(32, factory)
    index.add(X)
    if factory.startswith("IVF"):
        index.nprobe = 4
        assert index.nprobe == 4
    else:
        index.efSearch = 128
        assert index.efSearch == 128
    _, found = index.search(Q, 10)
    assert recall(found, brute(X, Q, 10)[1]) >= 0.9


def test_ivf_visiting_every_list_is_exact() -> None:
    index = FaissIndex(32, "IVF16,Flat")
    index.add(X)
    index.nprobe = 16
    assert np.array_equal(index.search(Q, 10)[1], brute(X, Q, 10)[1])


def test_ivf_pq_builds_and_finds_neighbours() -> None:
    index = FaissIndex(32, "IVF8,PQ16x4")  # 4-bit codes: fast to train, coarse
    index.add(X)
    index.nprobe = 8
    _, found = index.search(Q, 10)
    assert recall(found, brute(X, Q, 10)[1]) >= 0.3  # chance is 10 / 2000


def test_too_few_vectors_to_train_names_the_numbers() -> None:
    assert min_train_size("IVF64,Flat") == 64
    assert min_train_size("IVF16,PQ8") == 256
    assert min_train_size("IVF16,PQ8x4") == 16
    assert min_train_size("HNSW32") == 0
    with pytest.raises(IndexTrainingError, match=r"at least 64 vectors.*got 10") as e:
        FaissIndex(32, "IVF64,Flat").add(X[:10])
    assert isinstance(e.value, SiameseMarrowError)


def test_remove_then_search_equals_brute_force_on_the_rest() -> None:
    index = FaissIndex(32, "Flat")
    index.add(X[:300])
    gone = np.arange(0, 300, 3)
    assert index.remove(gone) == len(gone)
    assert index.ntotal == 200
    keep = np.setdiff1d(np.arange(300), gone)
    _, found = index.search(Q, 5)
    _, ref = brute(X[keep], Q, 5)
    assert np.array_equal(found, keep[ref])


def test_hnsw_cannot_remove() -> None:
    index = FaissIndex(32, "HNSW32")
    index.add(X[:100])
    with pytest.raises(RemoveUnsupported):
        index.remove(np.array([1, 2]))


def test_save_load_round_trip(tmp_path) -> None:
    index = FaissIndex(32, "IVF16,Flat")
    index.add(X)
    index.nprobe = 3
    path = tmp_path / "sub" / "x.faiss"
    index.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.faiss"]  # no temp left
    again = FaissIndex.load(path, "IVF16,Flat")
    assert again.ntotal == len(X) and again.nprobe == 3
    a, b = index.search(Q, 10), again.search(Q, 10)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert again.add(X[:1])[0] == len(X)  # new ids continue after the loaded ones


def test_damaged_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(FaissIndexError, match="not a readable FAISS index"):
        FaissIndex.load(bad)


def test_checks_shapes_and_dtypes() -> None:
    index = FaissIndex(32)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        index.add(X[:, :16])
    with pytest.raises(TypeError, match="floating"):
        index.add(np.ones((2, 32), dtype=np.int32))
    with pytest.raises(ValueError, match="ids"):
        index.add(X[:3], np.arange(2))
    index.add(X[:3].astype(np.float64))  # floats of any width are converted
    with pytest.raises(ValueError, match="nprobe applies to IVF"):
        index.nprobe = 2
    with pytest.raises(FaissIndexError, match="factory"):
        FaissIndex(32, "NoSuchIndex7")


def test_fewer_vectors_than_k_are_padded() -> None:
    index = FaissIndex(32)
    sims, ids = index.search(Q[:2], 3)
    assert (ids == -1).all() and np.isneginf(sims).all()
    index.add(X[:2])
    sims, ids = index.search(Q[:2], 3)
    assert (ids[:, 2] == -1).all() and (ids[:, :2] >= 0).all() and np.isneginf(sims[:, 2]).all()
