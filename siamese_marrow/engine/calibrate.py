"""Fitting the temperature of g on labelled held-out images.

``bank calibrate`` fits it on the validation split of the bank's run (or ``--data``) and stores
it in the bank's manifest, where ``classify`` finds it. ``evaluate`` reports g before and after a
temperature: the bank's own when it holds one, else one fitted here on the run's validation split,
else (no separate images to fit on) cross-fitted on the scored images themselves.

Images that are anchors of the bank are never fitted on: each would find itself among its
candidates and look more certain than a new cell can be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import Sample, load_samples
from ..data.prepare import prepare_data, synth_dir_of
from ..errors import DataError
from ..index.bank import AnchorBank
from ..index.calibration import apply_temperature, bank_temperature, fit_temperature, nll
from ..index.classify import classify
from ..index.store import writer_lock
from ..models.embed import embed_paths
from .banks import BankLike, open_bank
from .reliability import reliability_summary

#: Fewest labelled images a temperature is fitted on.
MIN_IMAGES = 20


@dataclass
class Labelled:
    """Raw g ``probs (N, C)`` of labelled images with their class indices ``y (N,)``."""

    probs: np.ndarray
    y: np.ndarray
    paths: list[str]
    left_out: dict[str, int]


def usable(
    bank: AnchorBank, samples: Sequence[Sample], exclude: Sequence[str] = ()
) -> tuple[list[Sample], dict[str, int]]:
    """The samples whose class is in the bank and that are neither anchors nor in ``exclude``
    (absolute paths), and how many were left out for each reason."""
    anchors = {a["path"] for a in bank.anchors}
    excluded = set(exclude)
    keep, out = [], {"anchors": 0, "scored": 0, "class_not_in_bank": 0}
    for s in samples:
        path = str(Path(s.path).absolute())
        reason = (
            "class_not_in_bank"
            if s.label not in bank.classes
            else "anchors"
            if path in anchors
            else "scored"
            if path in excluded
            else None
        )
        if reason:
            out[reason] += 1
        else:
            keep.append(Sample(path, s.label, s.group))
    return keep, {k: v for k, v in out.items() if v}


def raw_g(
    bank: AnchorBank,
    samples: Sequence[Sample],
    left_out: dict[str, int],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> Labelled:
    """The model's own g (temperature 1) of labelled samples against the bank."""
    paths = [s.path for s in samples]
    emb, _ = embed_paths(
        bank.model,
        paths,
        batch_size,
        num_workers,
        progress,
        desc="calibrate",
        tta=bank.bank_config.tta,
    )
    index = {c: i for i, c in enumerate(bank.classes)}
    y = np.array([index[s.label] for s in samples], dtype=np.int64)
    return Labelled(classify(bank, emb, temperature=1.0).probabilities, y, paths, left_out)


def fit_record(data: Labelled, fitted_on: str, n_bins: int = 10) -> dict[str, Any]:
    """Fit T on ``data`` and describe it: the record stored in a bank's manifest."""
    t = fit_temperature(data.probs, data.y)
    scaled = apply_temperature(data.probs, t)
    return {
        "temperature": round(t, 6),
        "fitted_on": fitted_on,
        "images": int(len(data.y)),
        "left_out": data.left_out,
        "nll_before": nll(data.probs, data.y),
        "nll_after": nll(scaled, data.y),
        "ece_before": reliability_summary(data.probs, data.y, n_bins)["ece"],
        "ece_after": reliability_summary(scaled, data.y, n_bins)["ece"],
    }


def validation_split(bank: AnchorBank) -> list[Sample]:
    """The validation split of the run the bank was built with (regenerated synthetic data
    included), or a :class:`DataError` saying it cannot be had."""
    run = bank.run
    data = prepare_data(run.cfg.data, synth_dir=synth_dir_of(run.run))
    if not data.val:
        raise DataError(f"run {run.run} has no validation split; calibrate with --data DIR")
    return data.val


def bank_calibrate(
    bank_dir: str | Path,
    *,
    data: str | Path | None = None,
    run: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the temperature of g on ``data`` (default: the validation split of the bank's run)
    and store it in the bank's manifest; ``classify`` uses it from then on. The bank's writer
    lock is held from reading to saving (as ``bank add`` does)."""
    with writer_lock(bank_dir):
        bank = open_bank(bank_dir, run)
        samples = load_samples(data) if data is not None else validation_split(bank)
        where = f"{data}" if data is not None else f"the validation split of run {bank.run.run}"
        keep, left_out = usable(bank, samples)
        if len(keep) < MIN_IMAGES:
            raise DataError(
                f"{where}: {len(keep)} usable image(s) of {len(samples)} (left out: "
                f"{left_out or 'none'}); a temperature needs at least {MIN_IMAGES} labelled "
                "images that are not anchors of the bank, of the bank's classes"
            )
        record = fit_record(raw_g(bank, keep, left_out, batch_size, num_workers, progress), where)
        bank.calibration = record
        bank.save(bank_dir)
    return {"bank": str(bank_dir), **record}


def _cross_fitted(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list]:
    """Each half of the images (seeded) scaled by the temperature fitted on the other half."""
    order = np.random.default_rng(seed).permutation(len(y))
    halves = [order[: len(y) // 2], order[len(y) // 2 :]]
    out = np.empty_like(probs, dtype=np.float32)
    temps = []
    for mine, other in (halves, halves[::-1]):
        t = fit_temperature(probs[other], y[other])
        out[mine] = apply_temperature(probs[mine], t)
        temps.append(round(t, 6))
    return out, temps


def evaluation_temperature(
    bank: BankLike,
    raw: np.ndarray,
    y: np.ndarray,
    scored: Sequence[str],
    *,
    candidates: Sequence[Sample] | None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The temperature ``evaluate`` reports for the scored images (raw g ``(N, C)``, classes
    ``y``, absolute ``scored`` paths): the bank's, else fitted on ``candidates`` (the run's
    validation split) less anchors and scored images, else cross-fitted on the scored images.

    Returns ``(record, scaled g (N, C) or None)``; the record says which and on what.
    """
    bank = open_bank(bank)
    stored = bank_temperature(bank)
    if bank.calibration:
        src = bank.calibration.get("fitted_on", "?")
        note = {"temperature": stored, "source": f"stored in the bank (fitted on {src})"}
        return note, apply_temperature(raw, stored)
    keep, left_out = usable(bank, candidates or [], scored)
    if len(keep) >= MIN_IMAGES:
        data = raw_g(bank, keep, left_out, batch_size, num_workers, progress)
        t = fit_temperature(data.probs, data.y)
        src = f"fitted on the run's validation split ({len(keep)} images, none scored here)"
        record = {"temperature": round(t, 6), "source": src, "left_out": left_out}
        return record, apply_temperature(raw, t)
    if len(y) >= MIN_IMAGES:
        scaled, temps = _cross_fitted(raw, y)
        record = {
            "temperature": round(fit_temperature(raw, y), 6),
            "source": (
                "cross-fitted on the scored images (no other labelled images to fit on): each "
                "half is scaled by the temperature fitted on the other half"
            ),
            "fold_temperatures": temps,
        }
        return record, scaled
    why = f"too few labelled images to fit a temperature (need {MIN_IMAGES})"
    return {"temperature": None, "source": why}, None
