"""Config: defaults, YAML, --set, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from siamese_marrow.config import Config, load_config, save_config
from siamese_marrow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "bm7_cpu", "paper_b5"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)


def test_yaml_then_set_override(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.01\n  epochs: 2\nmodel:\n  embed_dim: 64\n")
    cfg = load_config(p, ["train.lr=0.5", "data.classes=[BLA,EOS]", "train.amp=false"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 2 and cfg.model.embed_dim == 64
    assert cfg.data.classes == ["BLA", "EOS"] and cfg.train.amp is False
    assert cfg.train.weight_decay == Config().train.weight_decay  # untouched default


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.backbone=resnet18", "train.freeze=last-3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'.*allowed keys in train:.*lr"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("model.concat_head=conv", "model.concat_head: 'conv' is not one of mlp, linear"),
        ("train.freeze=some", "train.freeze.*last-N"),
        ("data.val_fraction=1.5", "val_fraction"),
        ("train.amp=maybe", "expected true or false"),
        ("noequals", "section.key=value"),
        ("train.lr=-1", r"train.lr=-1.0 must be > 0"),
        ("train.epochs=0", "train.epochs=0 must be >= 1"),
        ("model.tau_init=0", "model.tau_init=0.0 must be > 0"),
        ("bank.top_m=-3", "bank.top_m=-3 must be >= 0"),
    ],
)
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_yaml_file_named(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  backbone: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)
    p.write_text("model:\n  nonsense: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*model.nonsense"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
