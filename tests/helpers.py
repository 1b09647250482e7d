"""Shared pieces of the tests: a tiny model configuration and the command line in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]

#: A model small enough to train a few steps in seconds on one CPU core.
TINY_MODEL = [
    "model.backbone=test_efficientnet",
    "model.pretrained=none",
    "model.img_size=32",
    "model.embed_dim=8",
    "train.baseline_probe=false",
]


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py`` imported as a module (``tools`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_args(items: Iterable[str]) -> list[str]:
    """``["a.b=1", "c.d=2"]`` -> ``["--set", "a.b=1", "--set", "c.d=2"]``."""
    return [arg for kv in items for arg in ("--set", kv)]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m siamese_marrow.cli ARGS`` from the repository root, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "siamese_marrow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
