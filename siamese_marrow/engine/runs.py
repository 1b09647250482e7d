"""Run folders: which configuration a training run uses, whether a folder may become one, and
the lock that lets one process at a time train into it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from ..config import Config, load_config
from ..errors import ConfigError, TrainingError
from ..models.checkpoint import load_config_of
from ..utils import check_own_folder

#: Held by the process that trains into a run folder; its presence marks the folder as a run.
RUN_LOCK = ".lock"

#: The files a training run writes into its folder (a fresh start removes them).
RUN_FILES = (
    "config.yaml",
    "classes.json",
    "metrics.jsonl",
    "summary.json",
    "val_metrics.json",
    "baseline_probe.json",
    "skipped_images.json",
    "best.safetensors",
    "best.json",
    "last.safetensors",
    "last.state.pt",
    "last.json",
)


def holds_checkpoint(run: Path) -> bool:
    return any((run / f"{name}.json").exists() for name in ("last", "best"))


def check_run_folder(out: str | Path, force: bool = False) -> None:
    """Refuse, before anything is written, to start a new run in ``out`` when it already holds a
    trained run (continue it with --resume) or is a non-empty folder that is not a run, unless
    ``force``. A run folder without a checkpoint (killed in its first epoch) may start over."""
    out = Path(out)
    if force:
        return
    if holds_checkpoint(out):
        raise ConfigError(
            f"{out} already holds a run; continue it with --resume {out}, choose a new --out, "
            "or pass --force to start it over (its checkpoints are deleted)"
        )
    check_own_folder(out, (RUN_LOCK,), "a siamese-marrow run", force)


def clear_run_files(out: Path) -> None:
    """Delete what an earlier run in ``out`` wrote (a fresh start; the caller holds the lock)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path]:
    """Hold ``out``'s training lock (creating the folder); refused at once when another process
    trains into it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / RUN_LOCK, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TrainingError(
            f"another process is training into {out} (it holds {out / RUN_LOCK}); wait for it "
            "to finish, or choose another --out"
        ) from None
    try:
        yield out
    finally:
        lock.release()


def training_plan(
    out: str | Path | None,
    resume: str | Path | None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    skip_bad: bool = False,
    force: bool = False,
) -> tuple[Config, Path]:
    """The config and run folder of a ``train`` request: a new run in ``out`` (config file plus
    overrides), or ``resume`` with the run's own saved config. Refused with the reason before
    any file is written: --resume with --config/--set, no --out, an --out that holds a run or
    files that are not a run's (unless ``force``)."""
    if resume:
        if config or overrides:
            raise ConfigError(
                "--resume continues with the run's own config.yaml; drop --config/--set "
                "(start a new --out to change the configuration)"
            )
        return load_config_of(resume), Path(resume)
    if not out:
        raise ConfigError("train needs --out RUN (or --resume RUN)")
    cfg, out = load_config(config, list(overrides)), Path(out)
    if skip_bad:
        cfg.data.skip_bad = True
    check_run_folder(out, force)
    return cfg, out
