"""The paired comparison of two classifiers on the same images (``engine.metrics``), the
baselines' predictions it compares (``engine.probe``), and how ``tools/bench_methods.py`` pools
it over seeds."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, load_tool

from siamese_marrow.engine.metrics import mcnemar, paired_counts
from siamese_marrow.engine.probe import (
    knn_classify,
    knn_predict,
    logistic_predict,
    logistic_probe,
    prototype_classify,
    prototype_predict,
)


def exact_two_sided(a: int, b: int) -> float:
    """The exact McNemar p written out: twice the smaller binomial tail at 1/2, at most 1."""
    n, k = a + b, min(a, b)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_paired_counts_count_only_the_discordant_images():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    a = np.array([0, 1, 2, 0, 0, 0, 1, 1])  # right on 0-3 and 7
    b = np.array([0, 1, 1, 1, 1, 2, 1, 0])  # right on 0, 1, 4, 5
    out = paired_counts(y, a, b)
    # a alone: images 2, 3, 7; b alone: 4, 5; both right (0, 1) and both wrong (6) do not count
    assert (out["a_only"], out["b_only"]) == (3, 2)
    assert out["both_wrong"] == 1  # image 6, counted apart
    assert out["p_value"] == pytest.approx(exact_two_sided(3, 2))
    swapped = paired_counts(y, b, a)
    assert (swapped["a_only"], swapped["b_only"]) == (2, 3)
    assert swapped["p_value"] == pytest.approx(out["p_value"])
    # a is 1 image in 8 more accurate: 5/8 against 4/8
    assert out["n"] == 8 and out["difference"] == pytest.approx(1 / 8)
    assert swapped["difference"] == pytest.approx(-1 / 8)
    assert swapped["difference_ci95"] == pytest.approx([-x for x in out["difference_ci95"][::-1]])


def test_the_difference_interval_is_the_mean_per_image_difference_plus_minus_1_96_se():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    a = np.where(rng.random(300) < 0.8, y, (y + 1) % 4)
    b = np.where(rng.random(300) < 0.7, y, (y + 2) % 4)
    out = paired_counts(y, a, b)
    per_image = (a == y).astype(float) - (b == y)  # +1 a alone right, -1 b alone, 0 otherwise
    se = per_image.std() / np.sqrt(len(y))
    assert out["difference"] == pytest.approx(per_image.mean())
    assert out["difference_ci95"] == pytest.approx(
        [per_image.mean() - 1.959964 * se, per_image.mean() + 1.959964 * se], abs=1e-6
    )
    assert out["difference_ci95"][0] > 0  # 80% against 70% of 300 images: a is better
    # worked by hand: 3 vs 2 of 8 -> 1/8 +- 1.959964 * sqrt(5 - 1/8) / 8
    assert mcnemar(3, 2, n=8)["difference_ci95"] == pytest.approx(
        [0.125 - 0.540936, 0.125 + 0.540936], abs=1e-6
    )
    assert "difference" not in mcnemar(3, 2)  # without n, the test only
    with pytest.raises(ValueError, match="5 discordant images out of n=4"):
        mcnemar(3, 2, n=4)


@pytest.mark.parametrize(("a", "b"), [(1, 6), (5, 11), (0, 9), (10, 10), (3, 0)])
def test_mcnemar_is_the_exact_binomial_test(a, b):
    assert mcnemar(a, b)["p_value"] == pytest.approx(exact_two_sided(a, b))


def test_mcnemar_known_values_and_edges():
    assert mcnemar(1, 6)["p_value"] == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert mcnemar(0, 0)["p_value"] == 1.0  # nothing discordant: no evidence either way
    assert mcnemar(0, 8)["p_value"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="must be >= 0"):
        mcnemar(-1, 3)


def test_paired_counts_reject_mismatched_predictions():
    with pytest.raises(ValueError, match="one prediction of each classifier per image"):
        paired_counts([0, 1, 2], [0, 1, 2], [0, 1])


def blobs(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 2
    y_tr, y_te = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    x_tr = centres[y_tr] + rng.normal(size=(60, 16)) * 1.5
    x_te = centres[y_te] + rng.normal(size=(30, 16)) * 1.5
    return x_tr, y_tr, x_te, y_te


def test_predictions_are_what_the_metrics_score():
    x_tr, y_tr, x_te, y_te = blobs()
    names = ["a", "b", "c"]
    pairs = [
        (logistic_predict(x_tr, y_tr, x_te, 3), logistic_probe(x_tr, y_tr, x_te, y_te, names, 3)),
        (knn_predict(x_tr, y_tr, x_te, 5), knn_classify(x_tr, y_tr, x_te, y_te, names, 5)),
        (prototype_predict(x_tr, y_tr, x_te, 3), prototype_classify(x_tr, y_tr, x_te, y_te, names)),
    ]
    for pred, metrics in pairs:
        assert pred.shape == y_te.shape
        assert metrics["accuracy"] == pytest.approx(float((pred == y_te).mean()))
        assert np.array_equal(
            np.asarray(metrics["confusion_matrix"]),
            np.array([[np.sum((y_te == t) & (pred == p)) for p in range(3)] for t in range(3)]),
        )
    # on blobs this separable every method is far above chance
    assert all(float((p == y_te).mean()) > 0.8 for p, _ in pairs)


def test_prototype_predict_is_the_nearest_class_mean_by_cosine():
    x_tr = np.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    y_tr = np.array([0, 0, 2, 2])  # class 1 has no rows and is never predicted
    x_te = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.55]])
    means = np.stack([x_tr[:2].mean(0), x_tr[2:].mean(0)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    unit = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    expected = np.array([0, 2])[(unit @ means.T).argmax(1)]
    assert np.array_equal(prototype_predict(x_tr, y_tr, x_te, 3), expected)


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_methods")


def seed_result(y: np.ndarray, preds: dict[str, np.ndarray], bench) -> dict:
    rows = {n: {"balanced_accuracy": float((p == y).mean())} for n, p in preds.items()}
    return {
        "rows": rows,
        "fewshot": {},
        "paired": bench.paired_with_shipped(y, preds),
        "n_test": len(y),
    }


def test_bench_pairs_every_method_with_the_shipped_consensus_and_pools_seeds(bench):
    y = np.array([0, 1, 2, 0, 1, 2])
    shipped = bench.SHIPPED
    s1 = {shipped: np.array([0, 1, 2, 0, 0, 0]), "kNN-10": np.array([0, 1, 1, 1, 1, 2])}
    s2 = {shipped: np.array([0, 0, 2, 0, 1, 2]), "kNN-10": np.array([0, 1, 1, 1, 1, 1])}
    per_seed = [seed_result(y, s1, bench), seed_result(y, s2, bench)]
    assert set(per_seed[0]["paired"]) == {"kNN-10"}  # the consensus is not paired with itself
    first = per_seed[0]["paired"]["kNN-10"]
    assert (first["a_only"], first["b_only"]) == (2, 2)
    second = per_seed[1]["paired"]["kNN-10"]
    assert (second["a_only"], second["b_only"]) == (3, 1)
    pooled = bench.pool_paired(per_seed)["kNN-10"]
    assert (pooled["a_only"], pooled["b_only"]) == (5, 3)
    assert pooled["p_value"] == pytest.approx(exact_two_sided(5, 3))
    assert pooled["n"] == 12 and pooled["difference"] == pytest.approx(2 / 12)
    table = "\n".join(bench.paired_markdown(bench.pool_paired(per_seed)))
    lo, hi = (100 * x for x in mcnemar(5, 3, n=12)["difference_ci95"])
    assert pooled["both_wrong"] == 0

    # seeds written before both_wrong was kept: counted from their kept predictions, else blank
    def older(result: dict, preds: dict | None) -> dict:
        paired = {k: v for k, v in result["paired"]["kNN-10"].items() if k != "both_wrong"}
        out = dict(result, paired={"kNN-10": paired})
        if preds is not None:
            out |= {"y_test": y.tolist(), "predictions": {k: v.tolist() for k, v in preds.items()}}
        return out

    assert "both_wrong" not in bench.pool_paired([per_seed[0], older(per_seed[1], None)])["kNN-10"]
    s3 = s2 | {"kNN-10": np.array([2, 2, 2, 2, 2, 2])}  # wrong on image 1 as the consensus is
    third = seed_result(y, s3, bench)
    assert third["paired"]["kNN-10"]["both_wrong"] == 1
    assert bench.pool_paired([per_seed[0], older(third, s3)])["kNN-10"]["both_wrong"] == 0 + 1
    assert f"| kNN-10 | 5 | 3 | 0 | 0.727 | +16.7 [{lo:+.1f}, {hi:+.1f}] |" in table


def test_bench_counts_the_consensus_errors_every_method_on_its_embedding_shares(bench):
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    preds = {
        bench.SHIPPED: np.array([0, 1, 2, 1, 2, 0, 1, 1]),  # wrong on 3, 4, 5, 6
        "1-NN": np.array([0, 1, 2, 0, 2, 0, 2, 0]),  # right on 3 of those
        "logistic regression": np.array([0, 1, 2, 2, 2, 0, 1, 1]),  # right on none of them
        "kNN-10": np.array([0, 0, 0, 2, 0, 1, 0, 0]),  # right on 6 only
        "softmax classifier": y,  # another embedding: not counted
    }
    out = bench.shared_errors(y, preds)
    # 4 consensus errors; 3 is won back by 1-NN, 6 by kNN-10; 4 and 5 nobody gets
    assert out == {
        "n": 8,
        "methods": ["1-NN", "kNN-10", "logistic regression"],
        "consensus_wrong": 4,
        "all_wrong": 2,
    }
    # without kNN-10 image 6 is shared too
    without_knn = {k: v for k, v in preds.items() if k != "kNN-10"}
    assert bench.shared_errors(y, without_knn)["all_wrong"] == 3
    assert bench.shared_errors(y, {bench.SHIPPED: y}) is None
    seed = bench.closed_set_results(y, preds, ["a", "b", "c"])
    assert seed["shared_errors"] == out
    pooled = bench.pool_shared_errors([seed, seed])
    assert (pooled["n"], pooled["consensus_wrong"], pooled["all_wrong"]) == (16, 8, 4)
    text = "\n".join(bench.shared_errors_markdown(pooled))
    assert "gets 8 wrong; 4 (50%) of them every method" in text and "at most 4." in text
    assert bench.pool_shared_errors([seed, {"rows": {}}]) is None  # a seed from before
    # a file written before the count, with its predictions kept: counted from them
    older = {k: v for k, v in json.loads(json.dumps(seed)).items() if k != "shared_errors"}
    assert bench.pool_shared_errors([seed, older]) == pooled
    other = dict(seed, shared_errors=dict(out, methods=["1-NN"]))
    assert bench.pool_shared_errors([seed, other]) is None  # different methods do not pool


def test_bench_pools_nothing_when_a_seed_predates_the_paired_counts(bench):
    y = np.array([0, 1])
    new = seed_result(y, {bench.SHIPPED: y, "1-NN": y}, bench)
    old = {k: v for k, v in new.items() if k != "paired"}
    assert bench.pool_paired([new, old]) is None
    assert "no paired counts" in "\n".join(bench.paired_markdown(None))


def test_bench_gives_the_shipped_consensus_with_and_without_several_prototypes(bench, tmp_path):
    import torch
    import torch.nn.functional as F

    from siamese_marrow.config import Config, ModelConfig
    from siamese_marrow.index import AnchorBank, classify
    from siamese_marrow.models import build_model
    from siamese_marrow.models.checkpoint import load_run, save_checkpoint

    cfg = Config()
    cfg.model = ModelConfig(
        backbone="test_efficientnet", pretrained="none", embed_dim=8, img_size=32, aggregate="proto"
    )
    cfg.bank.adapt_steps, cfg.bank.prototypes_per_class = 10, 2
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", "best", build_model(cfg.model), cfg, ["x"])
    bank = AnchorBank(load_run(tmp_path / "run"))
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(60, 8, generator=g), dim=-1).numpy()
    labels = ["A"] * 20 + ["B"] * 20 + ["C"] * 20
    bank.add_embeddings(x, [f"/fake/{i}.png" for i in range(60)], labels)
    q = F.normalize(torch.randn(30, 8, generator=g), dim=-1).numpy()
    preds = bench.classify_preds(bank, q, ["A", "B", "C"])
    assert set(preds) == {bench.SHIPPED, bench.ONE_PROTOTYPE}
    index = {"A": 0, "B": 1, "C": 2}
    assert preds[bench.SHIPPED].tolist() == [index[p] for p in classify(bank, q).predictions]
    assert bank.bank_config.prototypes_per_class == 2  # put back
    bank.bank_config.prototypes_per_class = 1
    one = [index[p] for p in classify(bank, q).predictions]
    assert preds[bench.ONE_PROTOTYPE].tolist() == one
    assert set(bench.classify_preds(bank, q, ["A", "B", "C"])) == {bench.SHIPPED}


def test_bench_markdown_without_fewshot_has_no_fewshot_table(bench):
    y = np.array([0, 1, 2])
    per_seed = [seed_result(y, {bench.SHIPPED: y, "1-NN": np.array([0, 1, 1])}, bench)]
    for row in per_seed[0]["rows"].values():
        row.update(accuracy=0.5, f1_weighted=0.5, f1_macro=0.5)
    text = bench.markdown(bench.combine(per_seed), [0])
    assert "| 1-NN | 0.667 +- 0.000" in text and "Few-shot" not in text
    assert "| 1-NN | 1 | 0 |" in text


def test_bench_keeps_every_prediction_so_any_two_methods_can_be_paired_later(bench):
    y = np.array([0, 1, 2, 0, 1, 2])
    preds = {bench.SHIPPED: np.array([0, 1, 2, 0, 0, 0]), "1-NN": np.array([0, 1, 1, 1, 1, 2])}
    preds["kNN-10"] = np.array([0, 2, 2, 0, 1, 1])
    out = json.loads(json.dumps(bench.closed_set_results(y, preds, ["a", "b", "c"])))
    assert out["y_test"] == y.tolist()
    assert out["predictions"] == {k: v.tolist() for k, v in preds.items()}
    assert out["rows"]["1-NN"]["accuracy"] == pytest.approx(4 / 6, abs=1e-4)  # rounded to 4
    assert out["paired"]["1-NN"] == paired_counts(y, preds[bench.SHIPPED], preds["1-NN"])
    # two methods neither of which is the shipped one, from the JSON alone
    kept = {k: np.array(v) for k, v in out["predictions"].items()}
    again = paired_counts(np.array(out["y_test"]), kept["1-NN"], kept["kNN-10"])
    assert (again["a_only"], again["b_only"]) == (2, 2)


def test_bench_combines_only_the_rows_every_seed_has_and_names_the_rest(bench):
    y = np.array([0, 1, 2, 0, 1, 2])
    both = {bench.SHIPPED: y, "kNN-10": np.array([0, 1, 1, 0, 1, 2])}
    first = seed_result(y, both | {"softmax classifier": np.array([0, 0, 0, 0, 1, 2])}, bench)
    second = seed_result(y, both, bench)  # a run with --skip-softmax
    for row in [*first["rows"].values(), *second["rows"].values()]:
        row.update(accuracy=0.5, f1_weighted=0.5, f1_macro=0.5)
    first["fewshot"] = {"siamese embedding": {"prototype": {"1": {"mean": 0.5, "ci95": 0.1}}}}
    second["fewshot"] = {"siamese embedding": {}}
    combined = bench.combine([first, second])
    assert set(combined["closed_set"]) == {bench.SHIPPED, "kNN-10"}
    assert combined["closed_set"]["kNN-10"]["balanced_accuracy"]["mean"] == pytest.approx(5 / 6)
    assert set(combined["paired"]) == {"kNN-10"}
    assert combined["paired"]["kNN-10"]["n"] == 12
    assert combined["fewshot"] == {}
    assert combined["left_out"] == ["softmax classifier", "few-shot siamese embedding: prototype"]
    assert "left out: softmax classifier; few-shot" in bench.markdown(combined, [0, 1])


def _bench_files(
    bench, tmp_path: Path, weights: list[str | None], extra: list[dict] | None = None
) -> list[str]:
    """One seed's result file per entry of ``weights`` ("siamese_weights"; None: a file from
    before the key existed); ``extra``: keys to set in each file (``overrides``,
    ``resolved_config``)."""
    y = np.array([0, 1, 2, 0, 1, 2])
    files = []
    for w, more in zip(weights, extra or [{}] * len(weights), strict=True):
        path = tmp_path / f"{len(files)}.json"
        result = {"overrides": [], "fewshot": {}} | ({} if w is None else {"siamese_weights": w})
        result |= more
        seed = seed_result(y, {bench.SHIPPED: y}, bench) | {"seed": len(files)}
        for row in seed["rows"].values():  # every figure a real seed records
            row |= {k: row["balanced_accuracy"] for k in ("accuracy", "f1_weighted", "f1_macro")}
        result["per_seed"] = [seed]
        path.write_text(json.dumps(result))
        files.append(str(path))
    return files


def test_bench_refuses_to_combine_raw_weights_with_their_average(bench, tmp_path: Path):
    for weights in (["the run's model", "raw"], [None, "raw"]):
        files = _bench_files(bench, tmp_path, weights)
        with pytest.raises(
            SystemExit, match="differ in their config .* the few-shot setting or --raw"
        ):
            bench.main(
                ["--config", "x.yaml", "--combine", *files, "--json", str(tmp_path / "c.json")]
            )
        assert not (tmp_path / "c.json").exists()


def test_bench_combines_a_file_from_before_raw_weights_with_the_runs_model(bench, tmp_path: Path):
    files = _bench_files(bench, tmp_path, [None, "the run's model"])
    out = tmp_path / "c.json"
    assert bench.main(["--config", "x.yaml", "--combine", *files, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["seeds"] == [0, 1]


def test_bench_resolved_config_names_what_the_overrides_reach(bench):
    """Overrides that restate the config file's own values resolve to the same config; one that
    changes a value does not; the split seed, each run's own, is left out."""
    cfg = str(REPO / "configs" / "bm7_cpu.yaml")
    shipped = bench.resolved_config(cfg, [])
    assert shipped["sampler"]["p_classes"] == 5  # the test restates the shipped value below
    restated = ["sampler.p_classes=5", "sampler.k_per_class=11"]
    assert bench.resolved_config(cfg, restated) == shipped
    assert bench.resolved_config(cfg, ["sampler.p_classes=7"])["sampler"]["p_classes"] == 7
    assert bench.resolved_config(cfg, ["data.split_seed=26"]) == shipped
    assert "split_seed" not in shipped["data"]
    json.dumps(shipped)  # recorded in the result JSON as it is


def test_bench_combines_runs_whose_overrides_reach_the_same_config(bench, tmp_path: Path):
    model = "the run's model"
    same = {"sampler": {"p_classes": 5}}
    files = _bench_files(
        bench,
        tmp_path,
        [model, model],
        [
            {"overrides": ["sampler.p_classes=5"], "resolved_config": same},
            {"overrides": [], "resolved_config": same},
        ],
    )
    out = tmp_path / "c.json"
    assert bench.main(["--config", "x.yaml", "--combine", *files, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize(
    "second",
    [
        {"overrides": [], "resolved_config": {"sampler": {"p_classes": 7}}},
        # a file from before the resolved config was recorded: its config file may have changed
        {"overrides": []},
    ],
)
def test_bench_refuses_to_combine_runs_of_other_configs(bench, tmp_path: Path, second: dict):
    first = {"overrides": [], "resolved_config": {"sampler": {"p_classes": 5}}}
    model = "the run's model"
    files = _bench_files(bench, tmp_path, [model, model], [first, second])
    with pytest.raises(SystemExit, match="differ in their config"):
        bench.main(["--config", "x.yaml", "--combine", *files, "--json", str(tmp_path / "c.json")])
    assert not (tmp_path / "c.json").exists()
