"""Calibration and abstention, against values worked out by hand: temperature scaling of g,
the fitted temperature, equal-count reliability bins, ECE, the risk-coverage curve and the
thresholds that reach given accuracies; the bank keeps its temperature and classify uses it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_bank import bank, norm, queries, run_dir  # noqa: F401 - fixtures

from siamese_marrow.engine.reliability import (
    accuracy_thresholds,
    expected_calibration_error,
    reliability_bins,
    reliability_summary,
    risk_coverage,
    top_confidence,
)
from siamese_marrow.index import AnchorBank, BankError, classify
from siamese_marrow.index.calibration import apply_temperature, fit_temperature, nll


def test_apply_temperature_by_hand() -> None:
    # g = (0.9, 0.1): logit gap log 9; T = 2 halves it to log 3, so g becomes (0.75, 0.25)
    p = np.array([[0.9, 0.1], [0.5, 0.5]], np.float32)
    np.testing.assert_allclose(apply_temperature(p, 2.0), [[0.75, 0.25], [0.5, 0.5]], atol=1e-6)
    # T = 1/2 doubles it: (81/82, 1/82)
    np.testing.assert_allclose(apply_temperature(p, 0.5)[0], [81 / 82, 1 / 82], atol=1e-6)
    assert apply_temperature(p, 1.0) is not None and np.array_equal(apply_temperature(p, 1.0), p)
    # a class with g = 0 (underflow) stays (almost) 0 and the rest still sums to 1
    z = apply_temperature(np.array([[0.6, 0.4, 0.0]], np.float32), 3.0)
    assert z[0, 2] < 1e-12 and z.sum() == pytest.approx(1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(p, bad)


def test_nll_and_fitted_temperature_by_hand() -> None:
    # four calls at g = 0.9 of which three are right: NLL = -(3 log .9 + log .1) / 4
    p = np.array([[0.9, 0.1]] * 4, np.float32)
    y = [0, 0, 0, 1]
    assert nll(p, y) == pytest.approx(-(3 * math.log(0.9) + math.log(0.1)) / 4, rel=1e-6)
    # the best temperature makes g = 0.75 (3 right in 4): gap log 9 / T = log 3, so T = 2
    assert fit_temperature(p, y) == pytest.approx(2.0, rel=1e-4)
    assert nll(p, y, 2.0) == pytest.approx(-(3 * math.log(0.75) + math.log(0.25)) / 4, rel=1e-5)
    # g = 0.75 with 3 in 4 right is calibrated already: T = 1
    assert fit_temperature(np.array([[0.75, 0.25]] * 4), y) == pytest.approx(1.0, rel=1e-4)
    # all right: ever more confident is better, down to where the NLL is flat (~1e-16)
    assert fit_temperature(p, [0, 0, 0, 0]) < 0.1
    # half right: flatter is better, up to the upper bound
    assert fit_temperature(p, [0, 0, 1, 1]) == pytest.approx(20.0, rel=1e-3)


def test_fit_temperature_recovers_a_known_one() -> None:
    """Labels drawn from softmax(z / 3): fitting g = softmax(z) gives T close to 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (4000, 5))
    truth = np.exp(z / 3) / np.exp(z / 3).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in truth])
    g = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert fit_temperature(g, y) == pytest.approx(3.0, rel=0.08)
    assert nll(g, y, fit_temperature(g, y)) < nll(g, y)


def test_reliability_bins_and_ece_by_hand() -> None:
    conf = [0.9, 0.8, 0.6, 0.55]
    ok = [1, 0, 1, 1]
    bins = reliability_bins(conf, ok, n_bins=2)
    # equal-count bins of the sorted confidences: {0.55, 0.6} all right, {0.8, 0.9} half right
    assert bins == [
        {"lo": 0.55, "hi": 0.6, "confidence": pytest.approx(0.575), "accuracy": 1.0, "count": 2},
        {"lo": 0.8, "hi": 0.9, "confidence": pytest.approx(0.85), "accuracy": 0.5, "count": 2},
    ]
    # ECE = 1/2 |1 - 0.575| + 1/2 |0.5 - 0.85| = 0.2125 + 0.175
    assert expected_calibration_error(bins) == pytest.approx(0.3875)
    # five calls in two bins: sizes 3 and 2, the first larger
    five = reliability_bins([0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 1, 1, 1], 2)
    assert [b["count"] for b in five] == [3, 2]
    assert five[0]["accuracy"] == pytest.approx(1 / 3) and five[1]["accuracy"] == 1.0
    # more bins than calls: one bin per call; none: no bins and ECE 0
    assert len(reliability_bins([0.7], [1], 10)) == 1
    assert reliability_bins([], [], 10) == [] and expected_calibration_error([]) == 0.0
    # 0.8 confident, 8 in 10 right: calibrated as one bin; in ten bins of one call each,
    # (8 x |1 - 0.8| + 2 x |0 - 0.8|) / 10 = 0.32
    g, y = np.array([[0.8, 0.2]] * 10), [0] * 8 + [1] * 2
    assert reliability_summary(g, y, n_bins=1)["ece"] == pytest.approx(0.0, abs=1e-7)
    assert reliability_summary(g, y, n_bins=10)["ece"] == pytest.approx(0.32)


def test_top_confidence_counts_the_top_class() -> None:
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    conf, ok = top_confidence(p, [0, 0, 1])
    np.testing.assert_allclose(conf, [0.7, 0.8, 0.6])
    assert ok.tolist() == [True, False, False]


def test_risk_coverage_by_hand() -> None:
    conf = [0.9, 0.8, 0.8, 0.6, 0.3]
    ok = [1, 1, 0, 1, 0]
    # keep conf >= t: t=0.9 keeps 1 (right), 0.8 keeps 3 (2 right), 0.6 keeps 4, 0.3 all 5
    assert risk_coverage(conf, ok) == [
        {"threshold": 0.9, "coverage": 0.2, "accuracy": 1.0, "kept": 1},
        {"threshold": 0.8, "coverage": 0.6, "accuracy": pytest.approx(2 / 3), "kept": 3},
        {"threshold": 0.6, "coverage": 0.8, "accuracy": 0.75, "kept": 4},
        {"threshold": 0.3, "coverage": 1.0, "accuracy": 0.6, "kept": 5},
    ]
    table = accuracy_thresholds(conf, ok, (0.9, 0.7, 0.5, 0.99))
    # 0.9: only the top call; 0.7: t=0.6 keeps 4 at 0.75 (t=0.8 is below 0.7 but 0.6 is not);
    # 0.5: everything; 0.99: t=0.9 (1 of 1 right)
    assert [(r["threshold"], r["coverage"], r["kept"]) for r in table] == [
        (0.9, 0.2, 1),
        (0.6, 0.8, 4),
        (0.3, 1.0, 5),
        (0.9, 0.2, 1),
    ]
    none = accuracy_thresholds([0.9, 0.8], [0, 0], (0.9,))
    assert none == [
        {"target_accuracy": 0.9, "threshold": None, "coverage": 0.0, "accuracy": None, "kept": 0}
    ]


def test_risk_coverage_is_thinned_with_its_ends() -> None:
    rng = np.random.default_rng(1)
    conf = rng.random(1000)
    ok = rng.random(1000) < conf
    curve = risk_coverage(conf, ok, max_points=50)
    assert len(curve) == 50
    assert curve[0]["kept"] == 1 and curve[-1]["coverage"] == 1.0
    assert curve[-1]["accuracy"] == pytest.approx(ok.mean())
    cov = [c["coverage"] for c in curve]
    assert cov == sorted(cov)


def test_thresholds_work_as_abstain_below(bank) -> None:  # noqa: F811
    """A threshold from the table, passed back as abstain_below, keeps exactly its calls."""
    q = norm(queries(20))
    result = classify(bank, q)
    y = result.top.copy()
    y[::3] = (y[::3] + 1) % len(bank.classes)  # make a third of them wrong
    conf, ok = top_confidence(result.probabilities, y)
    for row in accuracy_thresholds(conf, ok, (0.5, 0.8)):
        if row["threshold"] is None:
            continue
        again = classify(bank, q, abstain_below=float(json.loads(json.dumps(row["threshold"]))))
        assert sum(p != "uncertain" for p in again.predictions) == row["kept"]


def test_bank_keeps_its_temperature_and_classify_uses_it(bank, tmp_path) -> None:  # noqa: F811
    q = norm(queries(10))
    raw = classify(bank, q)
    assert raw.temperature == 1.0
    bank.calibration = {"temperature": 2.5, "fitted_on": "hand"}
    out = bank.save(tmp_path / "bank")
    assert json.loads((out / "manifest.json").read_text())["calibration"]["temperature"] == 2.5
    again = AnchorBank.load(out)
    scaled = classify(again, q)
    assert scaled.temperature == 2.5
    np.testing.assert_allclose(
        scaled.probabilities, apply_temperature(raw.probabilities, 2.5), atol=1e-6
    )
    assert (scaled.top == raw.top).all()  # the calls do not change, only their confidence
    np.testing.assert_array_equal(
        classify(again, q, temperature=1.0).probabilities, raw.probabilities
    )
    rescaled = raw.with_temperature(2.5, abstain_below=0.0)
    np.testing.assert_allclose(rescaled.probabilities, scaled.probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="already scaled"):
        scaled.with_temperature(2.0, 0.0)


@pytest.mark.parametrize("bad", [-1, 0, "hot", None, [2]])
def test_bad_temperature_in_the_manifest_is_one_clear_error(bank, tmp_path, bad) -> None:  # noqa: F811
    out = bank.save(tmp_path / "bank")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["calibration"] = {"temperature": bad}
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = AnchorBank.load(out)
    with pytest.raises(BankError, match="calibration temperature .* bank calibrate"):
        classify(again, norm(queries(5)))


def test_a_bank_saved_before_calibration_existed_loads(bank, tmp_path) -> None:  # noqa: F811
    out = bank.save(tmp_path / "bank")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["calibration"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert classify(AnchorBank.load(out), norm(queries(5))).temperature == 1.0


def test_own_baselines_against_brute_force(bank) -> None:  # noqa: F811
    from siamese_marrow.engine.evaluate import own_baselines
    from siamese_marrow.engine.metrics import classification_metrics, headline

    q = bank.embeddings[::3]  # anchors themselves: 1-NN must not answer with the image itself
    paths = [bank.anchors[i]["path"] for i in range(0, len(bank), 3)]
    y = bank.labels[::3]
    got = own_baselines(bank, q, y, paths)
    sims = q @ bank.embeddings.T
    sims[np.arange(len(q)), np.arange(0, len(bank), 3)] = -np.inf
    nn = bank.labels[sims.argmax(1)]
    protos = np.stack([bank.embeddings[bank.labels == c].mean(0) for c in range(5)])
    proto = (q @ (protos / np.linalg.norm(protos, axis=1, keepdims=True)).T).argmax(1)
    (p_name, p), (n_name, n) = got.items()
    assert p_name.startswith("Prototypes") and n_name.startswith("1-NN")
    assert p == headline(classification_metrics(y, proto, bank.classes))
    assert n == headline(classification_metrics(y, nn, bank.classes))


def test_evaluation_temperature_sources(bank) -> None:  # noqa: F811
    from siamese_marrow.engine.calibrate import MIN_IMAGES, _cross_fitted, evaluation_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (40, 5))
    raw = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    paths = [f"/q/{i}.png" for i in range(40)]
    # no other labelled images: cross-fitted, each half by the other half's temperature
    record, scaled = evaluation_temperature(bank, raw, y, paths, candidates=[])
    assert record["source"].startswith("cross-fitted") and len(record["fold_temperatures"]) == 2
    np.testing.assert_array_equal(scaled, _cross_fitted(raw, y)[0])
    order = np.random.default_rng(0).permutation(40)
    first, second = order[:20], order[20:]
    t_second = fit_temperature(raw[second], y[second])
    np.testing.assert_allclose(scaled[first], apply_temperature(raw[first], t_second), atol=1e-6)
    assert record["temperature"] == pytest.approx(fit_temperature(raw, y), rel=1e-5)
    # too few images: none
    record, scaled = evaluation_temperature(
        bank, raw[: MIN_IMAGES - 1], y[: MIN_IMAGES - 1], paths[: MIN_IMAGES - 1], candidates=[]
    )
    assert record["temperature"] is None and scaled is None
    # a bank that holds one: that one, not refitted
    bank.calibration = {"temperature": 0.5, "fitted_on": "somewhere"}
    record, scaled = evaluation_temperature(bank, raw, y, paths, candidates=[])
    assert record == {"temperature": 0.5, "source": "stored in the bank (fitted on somewhere)"}
    np.testing.assert_allclose(scaled, apply_temperature(raw, 0.5), atol=1e-7)
