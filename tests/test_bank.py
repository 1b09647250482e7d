"""The anchor bank: save/load, model identity, tampering, interrupted saves, consensus coverage,
and few-shot addition of a new class on real images."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from siamese_marrow.config import Config, ModelConfig
from siamese_marrow.engine import banks, evaluate, predict
from siamese_marrow.index import AnchorBank, BankError, IndexTrainingError, classify, search
from siamese_marrow.index.classify import gather_candidates
from siamese_marrow.index.store import writer_lock
from siamese_marrow.models.checkpoint import load_run, save_checkpoint
from siamese_marrow.report import neighbours_gallery_png

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
D = 16


def make_run(
    run: Path,
    seed: int = 0,
    model_cfg: ModelConfig | None = None,
    zero_concat: bool = False,
    **cfg_changes: object,
) -> Path:
    """A tiny untrained model saved as a run directory."""
    from siamese_marrow.models import build_model

    cfg = Config()
    cfg.model = model_cfg or ModelConfig(
        backbone="test_efficientnet", pretrained="none", embed_dim=D, img_size=32
    )
    for k, v in cfg_changes.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    if zero_concat:  # h1 constant: the consensus ranks classes by the Hadamard (cosine) gate
        with torch.no_grad():
            model.head_concat.out.weight.zero_()
    save_checkpoint(run, "best", model, cfg, ["x"])
    return run


def clustered(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, D)) * 2
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.standard_normal((len(y), D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture()
def bank(run_dir) -> AnchorBank:
    x, y = clustered(12, 5, seed=0)
    b = AnchorBank(load_run(run_dir))
    b.add_embeddings(x, [f"/fake/c{c}/{i}.png" for i, c in enumerate(y)], [f"C{c}" for c in y])
    return b


def queries(n: int = 20) -> np.ndarray:
    return clustered(n // 5, 5, seed=0)[0] * 0.5 + clustered(n // 5, 5, seed=9)[0] * 0.5


def norm(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def adapted_by_hand(b: AnchorBank, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``adapt_prototypes`` called directly on the bank's anchors: what ``bank_prototypes``
    should give under the same settings."""
    from siamese_marrow.models.adapt import adapt_prototypes

    anchors, labels = torch.from_numpy(b.embeddings), torch.from_numpy(b.labels)
    return adapt_prototypes(b.model, anchors, labels, len(b.classes), **kwargs)


def same_results(a: AnchorBank, b: AnchorBank, q: np.ndarray) -> None:
    ra, rb = classify(a, q), classify(b, q)
    assert ra.classes == rb.classes
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert ra.predictions == rb.predictions and ra.support == rb.support
    assert search(a, q, 7) == search(b, q, 7)


def test_save_load_gives_identical_results(bank, tmp_path) -> None:
    out = bank.save(tmp_path / "bank")
    assert sorted(p.name for p in out.iterdir()) == [
        "anchors.json",
        "config.yaml",
        "embeddings.npy",
        "index.faiss",
        "manifest.json",
    ]
    # no temp or backup left; the writer lock file stays (removing a lock file is racy)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bank.lock", "bank"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {f"C{c}": 12 for c in range(5)}
    assert manifest["normalisation"] == "l2" and manifest["embed_dim"] == D
    assert manifest["index_factory"] == "Flat" and manifest["backbone"] == "test_efficientnet"
    again = AnchorBank.load(out)  # the model comes from the run recorded in the manifest
    same_results(bank, again, norm(queries()))


def test_bank_from_another_model_is_refused(bank, tmp_path) -> None:
    bank.save(tmp_path / "bank")
    other = make_run(tmp_path / "other", seed=1)
    with pytest.raises(BankError, match="weights") as e:
        AnchorBank.load(tmp_path / "bank", run=other)
    msg = str(e.value)
    want = json.loads((tmp_path / "bank" / "manifest.json").read_text())["weights_sha256"]
    have = load_run(other).meta["weights_sha256"]
    assert want[:16] in msg and have[:16] in msg and str(other) in msg


def test_same_weights_other_model_config_is_refused(bank, run_dir, tmp_path) -> None:
    bank.save(tmp_path / "bank")
    other = tmp_path / "other"
    loaded = load_run(run_dir)
    cfg = loaded.cfg
    cfg.model.tau_init = 0.5  # same tensors, different meaning
    save_checkpoint(other, "best", loaded.model, cfg, ["x"])
    assert load_run(other).meta["weights_sha256"] == loaded.meta["weights_sha256"]
    with pytest.raises(BankError, match="config"):
        AnchorBank.load(tmp_path / "bank", run=other)


@pytest.mark.parametrize("name", ["embeddings.npy", "anchors.json", "index.faiss", "config.yaml"])
def test_tampered_file_is_refused(bank, tmp_path, name) -> None:
    out = bank.save(tmp_path / "bank")
    data = bytearray((out / name).read_bytes())
    data[-2] ^= 0x01
    (out / name).write_bytes(bytes(data))
    with pytest.raises(BankError, match=f"{name} does not match.*tampered"):
        AnchorBank.load(out)


def test_missing_manifest_is_not_a_bank(tmp_path) -> None:
    with pytest.raises(BankError, match="not an anchor bank"):
        AnchorBank.load(tmp_path)


def test_leftover_temp_dir_is_ignored_then_cleaned(bank, tmp_path) -> None:
    out = bank.save(tmp_path / "bank")
    stale = tmp_path / ".bank.tmp-killed"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half written")
    same_results(bank, AnchorBank.load(out), norm(queries()))
    bank.save(out)
    assert not stale.exists()


def test_kill_between_renames_restores_previous_bank(bank, tmp_path, monkeypatch) -> None:
    out = bank.save(tmp_path / "bank")
    before = AnchorBank.load(out)
    bank.remove("C3")
    real_rename = os.rename
    calls = []

    def dying_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old -> backup done; new -> target never happens
            raise KeyboardInterrupt("killed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        bank.save(out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists() and (tmp_path / ".bank.bak").is_dir()
    read = AnchorBank.load(out)  # a reader reads the backup and changes nothing
    assert not out.exists() and (tmp_path / ".bank.bak").is_dir()
    assert "C3" in read.classes
    same_results(before, read, norm(queries()))
    with writer_lock(out):  # the next writer renames the backup back into place
        pass
    assert (out / "manifest.json").is_file() and not (tmp_path / ".bank.bak").exists()
    same_results(before, AnchorBank.load(out), norm(queries()))


def test_kill_before_backup_deleted_keeps_new_bank(bank, tmp_path) -> None:
    out = bank.save(tmp_path / "bank")
    backup = tmp_path / ".bank.bak"
    backup.mkdir()
    (backup / "anchors.json").write_text("[]")  # a partly deleted old bank
    loaded = AnchorBank.load(out)  # readers read the complete bank and leave the rest alone
    assert backup.exists() and len(loaded) == len(bank)
    with writer_lock(out):  # the next writer deletes the leftover backup
        pass
    assert not backup.exists() and len(AnchorBank.load(out)) == len(bank)


def test_refuses_to_overwrite_a_folder_that_is_not_a_bank(bank, tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(BankError, match="not an anchor bank"):
        bank.save(tmp_path / "photos")


def test_consensus_covers_every_class_even_with_top_m_1(bank) -> None:
    q = norm(queries())
    result = classify(bank, q, top_m=1, per_class_k=2)
    assert result.probabilities.shape == (len(q), 5)
    assert np.isfinite(result.probabilities).all() and (result.probabilities > 0).all()
    np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-5)
    assert (result.num_candidates >= 5 * 2).all()
    wide = classify(bank, q)  # default top_m=64 also reaches every class
    assert (wide.probabilities > 0).all()


def test_gather_candidates_matches_a_loop() -> None:
    x, y = clustered(6, 4, seed=3)
    q = norm(clustered(2, 4, seed=4)[0])
    sims = q @ x.T
    top = np.argsort(-sims, axis=1)[:, :3]
    rows = gather_candidates(q, x, y, 4, top, per_class_k=2)
    for i in range(len(q)):
        expect = set(top[i].tolist())
        for c in range(4):
            members = np.flatnonzero(y == c)
            if sum(y[t] == c for t in top[i]) < 2:
                expect |= set(members[np.argsort(-sims[i, members])[:2]].tolist())
        got = rows[i][rows[i] >= 0].tolist()
        assert len(got) == len(set(got)) and set(got) == expect


def test_abstain_and_record_shape(bank) -> None:
    q = norm(queries(5))
    result = classify(bank, q, abstain_below=1.01)
    assert result.predictions == ["uncertain"] * 5
    rec = result.records([f"q{i}.png" for i in range(5)])[0]
    assert list(rec) == ["path", "prediction", "probabilities", "anchors"]
    assert list(rec["probabilities"]) == bank.classes
    top_class = bank.classes[int(np.argmax(list(rec["probabilities"].values())))]
    assert rec["anchors"] and all(a["label"] == top_class for a in rec["anchors"])
    assert list(rec["anchors"][0]) == ["path", "label", "similarity", "pair_probability"]
    pp = [a["pair_probability"] for a in rec["anchors"]]
    assert pp == sorted(pp, reverse=True)
    certain = classify(bank, q, abstain_below=0.0)
    assert "uncertain" not in certain.predictions


def test_search_is_nearest_first_with_exact_cosine(bank) -> None:
    q = norm(queries(3))
    hits = search(bank, q, 4)
    sims = q @ bank.embeddings.T
    for i, row in enumerate(hits):
        order = np.argsort(-sims[i])[:4]
        assert [h["path"] for h in row] == [bank.anchors[j]["path"] for j in order]
        np.testing.assert_allclose([h["similarity"] for h in row], sims[i, order], atol=1e-5)
        assert all(0 < h["pair_probability"] < 1 for h in row)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_remove_class(run_dir, factory) -> None:
    x, y = clustered(12, 5, seed=0)
    b = AnchorBank(load_run(run_dir), factory)
    b.add_embeddings(x, [f"/f/{i}" for i in range(len(y))], [f"C{c}" for c in y])
    assert b.remove("C2") == 12
    assert b.classes == ["C0", "C1", "C3", "C4"] and b.index.ntotal == 48 == len(b.embeddings)
    hits = search(b, norm(x[y == 2][:3]), 48)
    assert all(h["label"] != "C2" for row in hits for h in row) and len(hits[0]) == 48
    with pytest.raises(BankError, match="not in the bank"):
        b.remove("C2")
    ids = b.add_embeddings(x[:1], ["/f/new"], ["C9"])
    assert ids[0] == 60  # ids are never reused


def test_ivf_bank_too_small_to_train(run_dir) -> None:
    b = AnchorBank(load_run(run_dir), "IVF64,Flat")
    x, y = clustered(4, 5, seed=0)
    with pytest.raises(IndexTrainingError, match="at least 64 vectors.*got 20"):
        b.add_embeddings(x, [f"/f/{i}" for i in range(20)], ["A"] * 20)
    assert len(b) == 0


def test_duplicate_images_are_refused(bank) -> None:
    with pytest.raises(BankError, match="already in the bank"):
        bank.add_embeddings(bank.embeddings[:1], [bank.anchors[0]["path"]], ["C0"])


def link_folder(dst: Path, picks: dict[str, list[Path]]) -> Path:
    for label, files in picks.items():
        (dst / label).mkdir(parents=True)
        for f in files:
            (dst / label / f.name).symlink_to(f)
    return dst


@pytest.mark.skipif(not (DATA / "pbc8").is_dir(), reason=f"real images not found at {DATA}/pbc8")
def test_new_class_is_classified_right_after_add(tmp_path, monkeypatch) -> None:
    """Real pbc8 images: a bank of three blood-cell classes, then platelets added from six
    examples; unseen platelets must come out as platelets without any training."""
    run = make_run(
        tmp_path / "run",
        model_cfg=ModelConfig(
            backbone="tf_efficientnet_lite0", pretrained="lite0", embed_dim=64, img_size=128
        ),
        zero_concat=True,
    )
    pbc8 = DATA / "pbc8"
    files = {c: sorted((pbc8 / c).glob("*.jpg")) for c in ("basophil", "lymphocyte", "neutrophil")}
    data = link_folder(tmp_path / "data", {c: f[:6] for c, f in files.items()})
    platelets = sorted((pbc8 / "platelet").glob("*.jpg"))
    bank_dir = tmp_path / "bank"

    summary = banks.bank_build(run, data, bank_dir, progress=False)
    assert summary["anchors"] == 18 and "platelet" not in summary["classes"]
    added = banks.bank_add(bank_dir, "platelet", platelets[:6], progress=False)
    assert added["added"] == 6 and added["classes"]["platelet"] == 6

    records, timing = predict.classify_paths_timed(bank_dir, platelets[6:16])
    predictions = [r["prediction"] for r in records]
    # untrained heads on ImageNet features: 8/10 over several seeds; chance is 2.5/10
    assert predictions.count("platelet") >= 7, predictions
    assert all(
        set(r["probabilities"]) == {"basophil", "lymphocyte", "neutrophil", "platelet"}
        for r in records
    )
    assert 0 < timing["outside_backbone_share"] < 1 and timing["backbone_s"] > 0
    # streamed in chunks of 3 images: the same records, the bank's prototypes derived once
    classify_module = importlib.import_module("siamese_marrow.index.classify")  # not the function

    calls = []
    real = classify_module.bank_prototypes
    monkeypatch.setattr(
        classify_module, "bank_prototypes", lambda bank: calls.append(1) or real(bank)
    )
    streamed, _ = predict.classify_paths_timed(bank_dir, platelets[6:16], stream_batch=3)
    assert len(calls) == 1 and [r["path"] for r in streamed] == [r["path"] for r in records]
    for one, other in zip(streamed, records, strict=True):  # batches of 3 vs 10: float noise
        assert one["prediction"] == other["prediction"]
        assert one["probabilities"] == pytest.approx(other["probabilities"], abs=1e-4)
        assert [a["path"] for a in one["anchors"]] == [a["path"] for a in other["anchors"]]
    lines = predict.format_records(records, "jsonl").splitlines()
    assert json.loads(lines[0])["path"] == str(platelets[6])
    assert (
        predict.format_records(records, "csv")
        .splitlines()[0]
        .startswith("path,prediction,p_basophil")
    )

    opened = banks.open_bank(bank_dir)  # load the model once for the rest
    found = predict.search_paths(opened, [platelets[0]], k=3)[0]
    assert found["neighbours"][0]["path"] == str(platelets[0].absolute())
    assert found["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    png = neighbours_gallery_png(platelets[0], found["neighbours"], tmp_path / "g.png")
    assert png.read_bytes()[:4] == b"\x89PNG"

    metrics = evaluate.retrieval_eval(opened, data)  # the anchors themselves, self excluded
    assert metrics["n_queries"] == 18 and 0 <= metrics["map_at_r"] <= 1

    removed = banks.bank_remove(bank_dir, "platelet")
    assert removed["removed"] == 6 and "platelet" not in removed["classes"]


def test_score_all_anchors_equals_the_full_consensus(bank) -> None:
    """Exact mode scores every anchor: g equals the consensus over the whole score matrix."""
    q = norm(queries())
    bank.config.bank.score_all_anchors = True
    result = classify(bank, q)
    assert (result.num_candidates == len(bank)).all()
    g, _, _ = bank.model.anchor_consensus(
        torch.from_numpy(bank.embeddings),
        torch.from_numpy(bank.labels),
        torch.from_numpy(q),
        len(bank.classes),
    )
    np.testing.assert_allclose(result.probabilities, g.numpy(), atol=1e-5)


def test_views_bank_keeps_each_anchors_views_through_add_remove_save_load(tmp_path) -> None:
    """bank.adapt_on=views: the bank keeps every anchor's 8 view embeddings (float16) beside
    its TTA embedding, in step with the anchors, and adapts the prototypes on them."""
    from PIL import Image

    from siamese_marrow.index.classify import bank_prototypes
    from siamese_marrow.models import build_model
    from siamese_marrow.models.embed import embed_paths

    cfg = Config()
    cfg.model = ModelConfig(
        backbone="test_efficientnet", pretrained="none", embed_dim=D, img_size=32, aggregate="proto"
    )
    cfg.bank.tta, cfg.bank.adapt_steps, cfg.bank.adapt_on = True, 15, "views"
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", "best", build_model(cfg.model), cfg, ["x"])
    loaded = load_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    files = {}
    for c in "ABC":
        files[c] = []
        for i in range(3):
            p = tmp_path / "img" / f"{c}{i}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
            files[c].append(p)
    b = AnchorBank(loaded)
    for c, paths in files.items():
        b.add(paths, label=c)
    all_paths = [p for c in "ABC" for p in files[c]]
    views, _ = embed_paths(loaded.model, all_paths, views=True)
    tta, _ = embed_paths(loaded.model, all_paths, tta=True)
    assert b.views.shape == (9, 8, D) and b.views.dtype == np.float16
    np.testing.assert_allclose(b.views, views, atol=2e-3)
    np.testing.assert_allclose(b.embeddings, tta, atol=1e-5)
    protos, _ = bank_prototypes(b)
    want, _ = adapted_by_hand(b, steps=15, views=torch.from_numpy(b.views))
    assert torch.equal(protos, want)
    on_mean, _ = adapted_by_hand(b, steps=15)
    assert not torch.allclose(protos, on_mean, atol=1e-4)
    # bank.adapt_lr is the Adam learning rate of those steps
    default_lr = b.bank_config.adapt_lr
    b.bank_config.adapt_lr = 0.1
    fast, _ = bank_prototypes(b)
    want_fast, _ = adapted_by_hand(b, steps=15, lr=0.1, views=torch.from_numpy(b.views))
    assert torch.equal(fast, want_fast) and not torch.allclose(fast, protos, atol=1e-4)
    b.bank_config.adapt_lr = default_lr

    b.save(tmp_path / "bank")
    assert (tmp_path / "bank" / "views.npy").is_file()
    back = AnchorBank.load(tmp_path / "bank")
    assert back.bank_config.adapt_on == "views"
    np.testing.assert_array_equal(back.views, b.views)
    same_results(b, back, tta[:4])
    kept = b.views[b.labels != b.classes.index("B")].copy()
    assert back.remove("B") == 3
    np.testing.assert_array_equal(back.views, kept)
    back.save(tmp_path / "bank")
    np.testing.assert_array_equal(AnchorBank.load(tmp_path / "bank").views, kept)

    with pytest.raises(ValueError, match="adapt_on=views"):
        back.add_embeddings(tta[3:4], ["/fake/new.png"], ["B"])
    (tmp_path / "bank" / "views.npy").unlink()
    with pytest.raises(BankError, match="views.npy is missing"):
        AnchorBank.load(tmp_path / "bank")


def test_mean_bank_has_no_views(bank, tmp_path) -> None:
    assert bank.views is None
    bank.save(tmp_path / "bank")
    assert not (tmp_path / "bank" / "views.npy").exists()
    assert AnchorBank.load(tmp_path / "bank").views is None
    with pytest.raises(ValueError, match="adapt_on=mean"):
        bank.add_embeddings(
            bank.embeddings[:1], ["/fake/x.png"], ["C0"], views=np.zeros((1, 8, D), np.float32)
        )


def test_prototypes_per_class_bank_classifies_by_each_classs_best_kmeans_centre(tmp_path) -> None:
    """bank.prototypes_per_class=2: a class of at least 20 anchors is scored through the better of
    its 2 adapted k-means centres, a smaller class through its mean; the setting is saved with
    the bank."""
    from siamese_marrow.index.classify import bank_prototypes

    run = make_run(tmp_path / "run", aggregate="proto")
    loaded = load_run(run)
    loaded.cfg.bank.adapt_steps, loaded.cfg.bank.prototypes_per_class = 20, 2
    x, y = clustered(24, 3, seed=3)
    x, y = x[:60], y[:60]  # classes 0 and 1: 24 anchors, 2 prototypes; class 2: 12, one
    b = AnchorBank(loaded)
    b.add_embeddings(x, [f"/fake/{i}.png" for i in range(len(y))], [f"C{c}" for c in y])
    protos, labels = bank_prototypes(b)
    assert labels.tolist() == [0, 0, 1, 1, 2]
    want, _ = adapted_by_hand(b, steps=20, prototypes_per_class=2)
    assert torch.equal(protos, want)
    q = norm(clustered(4, 3, seed=8)[0])
    result = classify(b, q)
    with torch.no_grad():
        logits, _ = loaded.model.prototype_logits(protos, labels, torch.from_numpy(q), 3)
    np.testing.assert_allclose(result.probabilities, torch.softmax(logits, -1).numpy(), atol=1e-5)
    one = AnchorBank(load_run(run))
    one.config.bank.adapt_steps = 20
    one.add_embeddings(x, [f"/fake/{i}.png" for i in range(len(y))], [f"C{c}" for c in y])
    assert bank_prototypes(one)[1].tolist() == [0, 1, 2]  # the default: one a class
    assert not np.allclose(classify(one, q).probabilities, result.probabilities, atol=1e-4)
    b.save(tmp_path / "bank")
    back = AnchorBank.load(tmp_path / "bank")
    assert back.bank_config.prototypes_per_class == 2
    np.testing.assert_allclose(classify(back, q).probabilities, result.probabilities, atol=1e-5)
