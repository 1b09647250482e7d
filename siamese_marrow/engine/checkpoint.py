"""Checkpoints: weights as safetensors, optimizer state via ``torch.load(weights_only=True)``,
config as YAML, classes and metadata as JSON. Every file is written atomically, and the metadata
file, written last, records the sha256 of the others: it is the commit point of a checkpoint.

Layout of a run directory::

    RUN/config.yaml  classes.json  metrics.jsonl
    RUN/last.safetensors  last.state.pt  last.json
    RUN/best.safetensors  best.json
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import Config, config_from_dict, save_config
from ..errors import ConfigError, SiameseMarrowError
from ..models import SiameseNet, build_model
from ..utils import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file


class CheckpointError(SiameseMarrowError):
    """A checkpoint that is missing, damaged or does not fit the model."""


def save_checkpoint(
    run: str | Path,
    name: str,
    model: SiameseNet,
    cfg: Config,
    classes: list[str],
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``RUN/<name>.safetensors`` (+ ``<name>.state.pt``) and then ``RUN/<name>.json``."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    atomic_write_json(run / "classes.json", list(classes))
    weights = run / f"{name}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    record: dict[str, Any] = dict(meta or {})
    record["weights"] = weights.name
    record["weights_sha256"] = sha256_file(weights)
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        state_path = run / f"{name}.state.pt"
        atomic_write_bytes(state_path, buf.getvalue())
        record["state"] = state_path.name
        record["state_sha256"] = sha256_file(state_path)
    record["config_sha256"] = cfg.digest()
    record["classes"] = list(classes)
    atomic_write_json(run / f"{name}.json", record)
    return weights


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
    path = Path(run) / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: {run} holds no '{name}' checkpoint "
            "(train one with siamese-marrow train --out RUN)"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {e})") from None


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
    path = run / meta[key]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {run}/*.json)")
    digest = sha256_file(path)
    if digest != meta[f"{key}_sha256"]:
        raise CheckpointError(
            f"{path} does not match its recorded sha256 (damaged or tampered); "
            "re-train or restore the file"
        )
    return path


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
        raise CheckpointError(f"{weights} does not fit the model of {run}/config.yaml: {e}") from None
    model.to(device).eval()
    return LoadedRun(model, cfg, list(meta["classes"]), meta, run, name)


def load_train_state(run: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and the optimizer/scheduler/sampler/RNG state of a checkpoint, for resuming."""
    run = Path(run)
    meta = read_meta(run, name)
    weights = load_file(str(verify(run, meta, "weights")), device="cpu")
    if "state" not in meta:
        raise CheckpointError(f"{run}/{name}.json records no training state; cannot resume")
    state = torch.load(verify(run, meta, "state"), map_location="cpu", weights_only=True)
    return weights, state
