"""From a DataConfig to labelled splits: the one place that decides where images come from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from .check import BadImage, validate_samples
from .datasets import Sample, class_list, load_samples
from .splits import split_samples

#: where a run keeps the synthetic data it generated (``data.root: synthetic``)
SYNTH_SUBDIR = "synthetic-data"


def synth_dir_of(run: str | Path) -> Path:
    """The folder of a run (or demo) that holds its generated synthetic data."""
    return Path(run) / SYNTH_SUBDIR


@dataclass
class PreparedData:
    """The class list (stable order) and the train/val/test samples."""

    source: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    bad: list[BadImage] = field(default_factory=list)


def ensure_synthetic(out: str | Path, cfg: DataConfig, seed: int = 0) -> Path:
    """Generate the embedded default data set into ``out`` unless the same one is already there."""
    from .synth import profile_counts, write_dataset

    out = Path(out)
    counts = profile_counts(cfg.synth_profile, per_class=cfg.synth_per_class, classes=cfg.classes)
    info = out / "synth.json"
    if info.is_file():
        try:
            old = json.loads(info.read_text())
            if (old.get("seed"), old.get("size"), old.get("counts")) == (
                seed,
                cfg.synth_size,
                counts,
            ):
                return out
        except json.JSONDecodeError:
            pass
    write_dataset(out, counts, seed=seed, size=cfg.synth_size)
    return out


def prepare_data(
    cfg: DataConfig, synth_dir: str | Path | None = None, progress: bool = False
) -> PreparedData:
    """Load ``cfg.root`` (generating synthetic data into ``synth_dir`` when root is "synthetic")
    and split it stratified by class (grouped when the manifest has groups)."""
    root = cfg.root
    if root == "synthetic":
        if synth_dir is None:
            raise ValueError("synthetic data needs a directory to be written to")
        root = str(ensure_synthetic(synth_dir, cfg))
    samples = load_samples(root, cfg.classes)
    bad: list[BadImage] = []
    if cfg.check_images:
        samples, bad = validate_samples(samples, cfg.skip_bad, progress=progress)
    splits = split_samples(samples, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return PreparedData(
        root, class_list(samples), splits["train"], splits["val"], splits["test"], bad
    )
