"""Banks that never mix up or lose anchors: removal on every index type, concurrent writers in
real processes, and readers that never fail or change anything while writers save."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import REPO, cli
from PIL import Image
from test_bank import D, make_run

from siamese_marrow.engine import banks
from siamese_marrow.index import AnchorBank, search
from siamese_marrow.index.faiss_index import FaissIndex
from siamese_marrow.models.checkpoint import load_run

# every kind bank.index=auto can choose (index/auto.py), at a size these tests can train
FACTORIES = ["Flat", "HNSW32", "IVF8,Flat", "IVF4,PQ16", "IVF4,SQfp16", "IVF4,SQ8", "OPQ8,IVF4,PQ8"]


def clustered(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, D)) * 2
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.standard_normal((len(y), D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def exhaustive(bank: AnchorBank) -> None:
    """Search every IVF list / a wide HNSW beam, so 'itself first' tests the id mapping only."""
    if "IVF" in bank.factory:
        bank.index.nprobe = 8
    if "HNSW" in bank.factory:
        bank.index.efSearch = 128


def assert_every_anchor_finds_itself(bank: AnchorBank, atol: float) -> None:
    exhaustive(bank)
    hits = search(bank, bank.embeddings, 3)
    for anchor, row in zip(bank.anchors, hits, strict=True):
        assert row[0]["path"] == anchor["path"], (bank.factory, anchor, row[:2])
        assert row[0]["label"] == anchor["label"]
        assert row[0]["similarity"] == pytest.approx(1.0, abs=1e-5)  # exact cosine of the rows
    # the index's own scores, not only our exact re-ranking: self-similarity ~ 1
    sims, ids = bank.index.search(bank.embeddings, 1)
    np.testing.assert_array_equal(ids[:, 0], bank.ids)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=atol)


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("first", ["C0", "C2", "C4"])  # the first, a middle and the last added
def test_remove_any_class_keeps_every_anchor_its_own_vector(
    run_dir: Path, tmp_path: Path, factory: str, first: str
) -> None:
    x, y = clustered(60, 5, seed=1)  # 300 vectors: enough to train PQ16's 256-centroid codebooks
    bank = AnchorBank(load_run(run_dir), factory)
    bank.add_embeddings(x, [f"/f/c{c}/{i}.png" for i, c in enumerate(y)], [f"C{c}" for c in y])
    # the index's own self-similarity, within its code's precision (OPQ+PQ: 300 training vectors
    # for 256 centroids per sub-quantizer); the ids are checked exactly either way
    atol = {"OPQ": 0.1, "PQ": 2e-2, "SQ8": 2e-2, "SQfp16": 1e-3}
    atol = next((v for k, v in atol.items() if k in factory), 1e-4)
    bank.remove(first)
    assert_every_anchor_finds_itself(bank, atol)
    second = "C1" if first != "C1" else "C3"
    bank.remove(second)  # a second removal used to abort inside FAISS for IVF
    assert_every_anchor_finds_itself(bank, atol)
    assert len(bank) == bank.index.ntotal == 180 and sorted(bank.classes) == sorted(
        {"C0", "C1", "C2", "C3", "C4"} - {first, second}
    )
    bank.save(tmp_path / "bank")
    loaded = AnchorBank.load(tmp_path / "bank", load_run(run_dir))
    assert_every_anchor_finds_itself(loaded, atol)
    loaded.remove(loaded.classes[0])
    assert_every_anchor_finds_itself(loaded, atol)


def test_bank_saved_with_an_idmap_around_ivf_is_repaired_on_load(
    run_dir: Path, tmp_path: Path
) -> None:
    """Banks of earlier versions wrapped IVF in an IDMap2; after a removal their ids pointed at
    other anchors' vectors. Loading one re-adds the vectors under their ids, keeping training."""
    x, y = clustered(60, 5, seed=2)
    bank = AnchorBank(load_run(run_dir), "IVF8,Flat")
    bank.add_embeddings(x, [f"/f/{i}.png" for i in range(len(y))], [f"C{c}" for c in y])
    legacy = faiss.index_factory(D, "IDMap2,IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    legacy.train(x)
    legacy.add_with_ids(x, bank.ids)
    bank.index.index = legacy
    drop = bank.ids[np.asarray(y) == 1]
    legacy.remove_ids(faiss.IDSelectorBatch(drop))  # the scrambling removal of old versions
    keep = np.asarray(y) != 1
    bank.embeddings = np.ascontiguousarray(bank.embeddings[keep])
    bank.anchors = [a for a, k in zip(bank.anchors, keep, strict=True) if k]
    bank._refresh()
    faiss.extract_index_ivf(legacy).nprobe = 8
    _, got = legacy.search(bank.embeddings, 1)
    assert (got[:, 0] != bank.ids).mean() > 0.3  # the old layout is wrong
    bank.save(tmp_path / "bank")
    loaded = AnchorBank.load(tmp_path / "bank", load_run(run_dir))
    assert not loaded.index.needs_refill and not isinstance(loaded.index.index, faiss.IndexIDMap2)
    assert_every_anchor_finds_itself(loaded, 1e-4)


def test_ivf_index_ids_follow_removals() -> None:
    x, _ = clustered(40, 5, seed=3)
    index = FaissIndex(D, "IVF4,Flat")
    ids = np.arange(len(x), dtype=np.int64) * 3 + 5
    index.add(x, ids)
    assert sorted(index.ids()) == sorted(ids)
    index.remove(ids[10:50])
    assert sorted(index.ids()) == sorted(np.r_[ids[:10], ids[50:]])
    index.nprobe = 4
    _, got = index.search(x[50:], 1)
    np.testing.assert_array_equal(got[:, 0], ids[50:])


# --- writers in real processes ---------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from siamese_marrow.engine import banks
    bank, images, prefix, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for i in range(rounds):
        banks.bank_add(bank, f"{prefix}{i}", [f"{images}/{i}"], progress=False)
    print("ok")
    """
)

READER = textwrap.dedent(
    """
    import sys, time
    from siamese_marrow.index import AnchorBank
    from siamese_marrow.models.checkpoint import load_run
    bank, run, stop = sys.argv[1], load_run(sys.argv[2]), sys.argv[3]
    import os
    loads, errors = 0, []
    AnchorBank.load(bank, run)
    print("ready", flush=True)
    while not os.path.exists(stop):
        try:
            b = AnchorBank.load(bank, run)
            assert len(b) == b.index.ntotal == len(b.embeddings), "inconsistent bank"
            loads += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(loads, len(errors))
    for e in errors[:5]:
        print(e)
    """
)


def _images(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture()
def base_bank(run_dir: Path, tmp_path: Path) -> Path:
    images = _images(tmp_path / "seed_images", 6, seed=0)
    bank = AnchorBank(load_run(run_dir))
    bank.add([str(p) for p in sorted(images.glob("*.png"))], "BASE")
    bank.save(tmp_path / "bank")
    return tmp_path / "bank"


def test_two_writer_processes_and_a_reader_lose_nothing(
    run_dir: Path, base_bank: Path, tmp_path: Path
) -> None:
    """Two real processes add 6 classes each to one bank at the same time while a third loads
    it in a loop: every class of both writers is there at the end, and no load ever fails."""
    rounds = 6
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(rounds):  # each image can be an anchor once: new images every round
        _images(a / str(i), 3, seed=10 + i)
        _images(b / str(i), 3, seed=20 + i)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(base_bank), str(run_dir), str(stop)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "ready"  # loading in a loop before writers start
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(base_bank), str(folder), prefix, str(rounds)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, prefix in ((a, "A"), (b, "B"))
    ]
    outs = [w.communicate(timeout=600) for w in writers]
    stop.touch()
    r_out, r_err = reader.communicate(timeout=120)
    for w, (out, err) in zip(writers, outs, strict=True):
        assert w.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert reader.returncode == 0, r_err[-2000:]
    loads, errors = (int(v) for v in r_out.split()[:2])
    assert errors == 0, r_out
    assert loads > 0
    final = AnchorBank.load(base_bank, load_run(run_dir))
    want = {"BASE"} | {f"{p}{i}" for p in "AB" for i in range(rounds)}
    assert set(final.classes) == want
    assert final.class_counts() == {c: (6 if c == "BASE" else 3) for c in sorted(want)}
    assert len(final) == final.index.ntotal == 6 + 2 * rounds * 3
    print(f"\n2 writers x {rounds} adds, reader: {loads} loads, {errors} errors")


def test_two_bank_add_commands_at_once_keep_both_classes(
    run_dir: Path, base_bank: Path, tmp_path: Path
) -> None:
    a = _images(tmp_path / "a", 3, seed=1)
    b = _images(tmp_path / "b", 3, seed=2)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "siamese_marrow.cli",
                "bank",
                "add",
                "--bank",
                str(base_bank),
                "--label",
                label,
                str(folder),
                "--quiet",
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, label in ((a, "ALPHA"), (b, "BETA"))
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    info = cli("bank", "info", "--bank", str(base_bank))
    assert info.returncode == 0, info.stderr
    assert '"ALPHA": 3' in info.stdout and '"BETA": 3' in info.stdout


def test_readers_change_nothing(run_dir: Path, base_bank: Path) -> None:
    """A leftover backup and temporary folder (a killed writer) stay as they are when the bank
    is loaded or shown; the next writer clears them."""
    parent = base_bank.parent
    (parent / ".bank.bak").mkdir()
    (parent / ".bank.bak" / "anchors.json").write_text("[]")
    (parent / ".bank.tmp-x").mkdir()
    before = sorted(p.name for p in parent.iterdir())
    AnchorBank.load(base_bank, load_run(run_dir))
    banks.bank_info(base_bank)
    assert sorted(p.name for p in parent.iterdir()) == before
    banks.bank_remove(base_bank, "BASE", run=run_dir)
    assert not (parent / ".bank.bak").exists() and not (parent / ".bank.tmp-x").exists()


def test_a_bank_mid_save_reads_from_its_backup(run_dir: Path, base_bank: Path) -> None:
    """Between a writer's two renames only the backup exists: readers read it."""
    backup = base_bank.parent / ".bank.bak"
    os.rename(base_bank, backup)
    bank = AnchorBank.load(base_bank, load_run(run_dir))
    assert bank.classes == ["BASE"] and not base_bank.exists() and backup.exists()
    assert banks.bank_info(base_bank)["num_anchors"] == 6
