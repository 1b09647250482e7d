"""Run folders: which configuration a training run uses and whether a folder may become one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import Config, load_config
from ..errors import ConfigError
from ..models.checkpoint import load_config_of


def training_plan(
    out: str | Path | None,
    resume: str | Path | None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    skip_bad: bool = False,
) -> tuple[Config, Path]:
    """The config and run folder of a ``train`` request: a new run in ``out`` (config file plus
    overrides), or ``resume`` with the run's own saved config. Refused with the reason before
    any file is written: --resume with --config/--set, no --out, an --out that holds a run."""
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
    if (out / "last.json").exists():
        raise ConfigError(
            f"{out} already holds a run; continue it with --resume {out} or choose a new --out"
        )
    return cfg, out
