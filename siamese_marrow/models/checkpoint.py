"""Checkpoints: weights as safetensors, optimizer state via ``torch.load(weights_only=True)``,
config as YAML, classes and metadata as JSON. Every file is written atomically, and the metadata
file, written last, records the sha256 of the others: it is the commit point of a checkpoint.

Layout of a run directory::

    RUN/config.yaml  classes.json  metrics.jsonl
    RUN/last.safetensors  last.state.pt  last.json
    RUN/best.safetensors  best.json

A new checkpoint is first written beside the old one as ``.next.<name>.safetensors``,
``.next.<name>.state.pt`` and then ``.next.<name>.json`` (the commit point), and only then moved
over the old files, metadata last. A process killed at any moment leaves a loadable checkpoint:
before the commit the old one is untouched (the next save deletes the staged files); after it,
readers take the metadata from ``.next.<name>.json`` and each file from wherever its recorded
sha256 matches (staged or moved), and the next save finishes the move.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..config import Config, config_from_dict, save_config
from ..errors import CheckpointError, ConfigError
from ..utils import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file
from .siamese import SiameseNet, build_model


def save_checkpoint(
    run: str | Path,
    name: str,
    model: SiameseNet,
    cfg: Config,
    classes: list[str],
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``RUN/<name>.safetensors`` (+ ``<name>.state.pt``) and ``RUN/<name>.json``, so that
    a kill at any moment leaves the old checkpoint or the new one (see the module docstring)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    finish_or_discard(run, name)
    remove_stale_temp_files(run)
    save_config(cfg, run / "config.yaml")
    atomic_write_json(run / "classes.json", list(classes))
    weights = run / f"{name}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # serialised in memory, written by Python: a full disk is an OSError naming the file
    atomic_write_bytes(staged(weights), safetensors_bytes(tensors, metadata={"format": "pt"}))
    record: dict[str, Any] = dict(meta or {})
    record["weights"] = weights.name
    record["weights_sha256"] = sha256_file(staged(weights))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        state_path = run / f"{name}.state.pt"
        atomic_write_bytes(staged(state_path), buf.getvalue())
        record["state"] = state_path.name
        record["state_sha256"] = sha256_file(staged(state_path))
    record["config_sha256"] = cfg.digest()
    record["classes"] = list(classes)
    atomic_write_json(staged(run / f"{name}.json"), record)  # the commit point
    _move_into_place(run, name)
    return weights


def staged(path: Path) -> Path:
    """Where the next version of a checkpoint file is written before it replaces ``path``."""
    return path.parent / f".next.{path.name}"


def _checkpoint_files(run: Path, name: str) -> list[Path]:
    return [run / f"{name}.safetensors", run / f"{name}.state.pt", run / f"{name}.json"]


def _move_into_place(run: Path, name: str) -> None:
    """Move a committed checkpoint's staged files over the old ones, metadata last; safe to
    repeat after a kill (files already moved are skipped)."""
    for path in _checkpoint_files(run, name):
        with contextlib.suppress(FileNotFoundError):
            os.replace(staged(path), path)
    fsync_dir(run)


def finish_or_discard(run: Path, name: str) -> None:
    """Complete a save that was killed after its commit point, or delete the staged files of
    one killed before it (only the run's one writer calls this)."""
    if staged(run / f"{name}.json").is_file():
        _move_into_place(run, name)
    else:
        for path in _checkpoint_files(run, name):
            staged(path).unlink(missing_ok=True)


#: Temp files of the run's own files, as :func:`..utils.atomic_path` names them.
RUN_TEMP_FILES = (
    ".*.safetensors.*.tmp",
    ".*.state.pt.*.tmp",
    ".*.json.*.tmp",
    ".config.yaml.*.tmp",
    ".metrics.jsonl.*.tmp",
)


def remove_stale_temp_files(run: Path) -> None:
    """Delete temp files that a killed writer left in ``run`` (``atomic_path`` removes its temp
    file itself unless the process dies); one writer per run, so none of them is in use."""
    for pattern in RUN_TEMP_FILES:
        for stale in run.glob(pattern):
            stale.unlink(missing_ok=True)


@dataclass
class LoadedRun:
    model: SiameseNet
    cfg: Config
    classes: list[str]
    meta: dict[str, Any]
    run: Path
    name: str

    @property
    def weights_path(self) -> Path:
        return self.run / f"{self.name}.safetensors"


def read_meta(run: str | Path, name: str) -> dict[str, Any]:
    """``RUN/<name>.json``, or its staged successor when a save was killed after committing it."""
    path = Path(run) / f"{name}.json"
    for candidate in (staged(path), path):
        try:
            text = candidate.read_text()
        except FileNotFoundError:
            continue
        try:
            return json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{candidate} is damaged (not valid JSON: {e})") from None
    raise CheckpointError(
        f"{path} not found: {run} holds no '{name}' checkpoint "
        "(train one with siamese-marrow train --out RUN)"
    )


def load_config_of(run: str | Path) -> Config:
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run} is not a siamese-marrow run directory")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ConfigError) as e:
        raise CheckpointError(f"{path} is damaged or from another version: {e}") from None


def verify(run: Path, meta: dict[str, Any], key: str) -> Path:
    """The file ``meta[key]``, checked against its recorded sha256: in place, or still staged
    when a save was killed between its commit point and the move into place."""
    path = run / meta[key]
    for candidate in (path, staged(path)):
        with contextlib.suppress(FileNotFoundError):
            if sha256_file(candidate) == meta[f"{key}_sha256"]:
                return candidate
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {run}/*.json)")
    raise CheckpointError(
        f"{path} does not match its recorded sha256 (damaged or tampered); "
        "re-train or restore the file"
    )


def load_run(run: str | Path, name: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild the model of a run and load its ``name`` checkpoint (no unpickling)."""
    run = Path(run)
    if name == "best" and not (run / "best.json").is_file() and (run / "last.json").is_file():
        name = "last"
    meta = read_meta(run, name)
    cfg = load_config_of(run)
    weights = verify(run, meta, "weights")
    model = build_model(cfg.model, pretrained="none")
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise various types
        raise CheckpointError(
            f"{weights} does not fit the model of {run}/config.yaml: {e}"
        ) from None
    model.to(device).eval()
    return LoadedRun(model, cfg, list(meta["classes"]), meta, run, name)


def load_train_state(run: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and the optimizer/scheduler/sampler/RNG state of a checkpoint, for resuming."""
    run = Path(run)
    meta = read_meta(run, name)
    weights = load_file(str(verify(run, meta, "weights")), device="cpu")
    if "state" not in meta:
        raise CheckpointError(f"{run}/{name}.json records no training state; cannot resume")
    state_path = verify(run, meta, "state")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the file is refused anyway
            warnings.simplefilter("ignore")
            state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler raises various types
        text = " ".join(str(e).split())
        reason = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0]
        reason = reason.split(" Please use")[0].strip() or type(e).__name__
        raise CheckpointError(
            f"{state_path} was refused: it is not plain training state (tensors, numbers, "
            f"strings) and may be a pickle that runs code ({reason.strip()[:200]}); restore the "
            "file or re-train"
        ) from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "state_json"} <= set(state):
        raise CheckpointError(
            f"{state_path} holds no optimizer/scheduler/training state; cannot resume"
        )
    return weights, state
