"""Slow (run with ``python -m pytest -m slow``): a short real training run on bm7."""

from __future__ import annotations

from pathlib import Path

import pytest

from siamese_marrow.config import load_config
from siamese_marrow.engine.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bm7_consensus_beats_the_frozen_probe(bm7: Path, tmp_path: Path) -> None:
    """Six epochs of configs/bm7_cpu.yaml (a few minutes on 2 cores): the siamese consensus on
    the validation split beats logistic regression on the frozen pretrained features."""
    # 90 steps: the shipped average over about 100 steps (train.ema_decay 0.99) would still hold
    # 40% of the first step's weights, so a shorter one
    overrides = [
        f"data.root={bm7}",
        "train.epochs=6",
        "data.val_fraction=0.2",
        "train.ema_decay=0.9",
    ]
    cfg = load_config(REPO / "configs" / "bm7_cpu.yaml", [*overrides, "train.baseline_probe=true"])
    summary = train(cfg, tmp_path / "run", progress=False)
    probe = summary["baseline_probe"]["balanced_accuracy"]
    ours = summary["best_val"]["balanced_accuracy"]
    print(f"\nbm7, 6 epochs: consensus balanced accuracy {ours:.3f}, frozen probe {probe:.3f}")
    assert ours > probe + 0.05
