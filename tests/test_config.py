"""Config: defaults, YAML, --set, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from siamese_marrow.config import BankConfig, Config, load_config, overridden, save_config
from siamese_marrow.errors import ConfigError
from siamese_marrow.utils import brief

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
        ("bank.adapt_lr=0", "bank.adapt_lr=0.0 must be > 0"),
        ("bank.prototypes_per_class=0", "bank.prototypes_per_class=0 must be >= 1"),
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


def _alias_bomb(levels: int = 9) -> str:
    """YAML of 9 aliases each repeating the previous one 9 times: 9**levels values once expanded."""
    names = "abcdefghijk"
    out = f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, name in zip(names[: levels - 1], names[1:levels], strict=True):
        out += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    return out


def test_alias_bomb_file_refused_with_a_short_message(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    last = "abcdefghijk"[8]
    p.write_text(_alias_bomb() + f"data:\n  root: [{', '.join(['*' + last] * 9)}]\n")
    assert p.stat().st_size < 1000
    with pytest.raises(ConfigError, match="bomb.yaml.*expands to more than 100,000") as info:
        load_config(p)
    assert len(str(info.value)) < 300


BOMB_VALUE = (
    "[&a [x, x, x, x, x, x, x, x, x], "
    + ", ".join(f"&{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcde", "bcdef", strict=True))
    + "]"
)


@pytest.mark.parametrize(
    "override,match",
    [
        (f"data.root={BOMB_VALUE}", "data.root=.*expands to more than 100,000"),
        ("data.root=&a [*a]", "refers to itself"),
        (
            "train.lr=" + "x" * 3000,
            "train.lr: expected a number, got 'xxx.*3,000 characters in all",
        ),
        ("data.root=[" + ", ".join(["long-item"] * 3000) + "]", "data.root: expected a string"),
        ("x" * 3000, "--set 'xxx.*3,000 characters in all.*section.key=value"),
    ],
)
def test_hostile_set_values_give_bounded_messages(override: str, match: str) -> None:
    assert len(BOMB_VALUE) < 300
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [override])
    assert len(str(info.value)) < 500, len(str(info.value))


def test_brief_bounds_any_value() -> None:
    assert brief("abc") == "'abc'"
    long = brief("y" * 10_000)
    assert long.startswith("'yyy") and long.endswith("(10,000 characters in all)")
    assert len(long) < 250
    nested: list = ["z"] * 9
    for _ in range(30):  # 9**30 leaves if expanded; brief must not expand it
        nested = [nested] * 9
    assert len(brief(nested)) < 300 and brief(nested).endswith("... (list of 9 items)")


def test_huge_and_deep_config_files_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("train:\n  lr: 0.1\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match=r"big.yaml is 1,200,01\d bytes, above the limit"):
        load_config(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("data:\n  root: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml.*nested too deeply"):
        load_config(deep)
    digits = tmp_path / "digits.yaml"
    digits.write_text("train:\n  epochs: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="digits.yaml") as info:
        load_config(digits)
    assert len(str(info.value)) < 500


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
        ("train.lr=.nan", "train.lr: expected a finite number, got nan"),
        ("model.tau_init=nan", "model.tau_init: expected a finite number"),
        ("train.weight_decay=inf", "train.weight_decay: expected a finite number"),
        ("augment.hue=-.inf", "augment.hue: expected a finite number"),
        ("data.val_fraction=1e400", "data.val_fraction: expected a finite number"),
        ("bank.abstain_below=1.5", "bank.abstain_below=1.5 must be <= 1"),
        ("bank.abstain_below=-0.1", "bank.abstain_below=-0.1 must be >= 0"),
        ("model.drop_rate=5", "model.drop_rate=5.0 must be < 1"),
        ("model.drop_rate=1", "model.drop_rate=1.0 must be < 1"),
        ("train.ema_decay=1", "train.ema_decay=1.0 must be < 1"),
        ("train.ema_decay=-0.5", "train.ema_decay=-0.5 must be >= 0"),
        ("model.img_size=1", "model.img_size=1 is too small.*at least 32"),
        ("model.img_size=31", "model.img_size=31 is too small"),
        ("augment.hue=0.6", "augment.hue=0.6 must be <= 0.5"),
        ("augment.scale_max=1.5", "augment.scale_max=1.5 must be <= 1"),
        ("data.root=", "data.root is empty"),
        ("data.root=   ", "data.root is empty"),
    ],
)
def test_range_checks(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_range_edges_accepted() -> None:
    cfg = load_config(
        None,
        [
            "bank.abstain_below=1",
            "model.drop_rate=0.99",
            "model.img_size=32",
            "augment.hue=0.5",
            "train.ema_decay=0.999",
        ],
    )
    assert cfg.bank.abstain_below == 1.0 and cfg.model.drop_rate == 0.99
    assert cfg.train.ema_decay == 0.999
    assert load_config(None, ["model.img_size=0"]).model.img_size == 0
    with pytest.raises(ConfigError, match="scale_min=0.9 is above scale_max=0.5"):
        load_config(None, ["augment.scale_min=0.9", "augment.scale_max=0.5"])


def test_overridden_applies_a_sections_values_through_its_checks() -> None:
    bank = BankConfig(adapt_steps=300, adapt_on="views")
    out = overridden(bank, "bank", adapt_on="mean", adapt_lr=0.2, tta=None)
    assert (out.adapt_on, out.adapt_lr, out.adapt_steps) == ("mean", 0.2, 300)
    assert out.tta == bank.tta  # None keeps the section's own value
    assert (bank.adapt_on, bank.adapt_lr) == ("views", BankConfig.adapt_lr)  # the input is kept
    refusals = {
        "adapt_on": ("sideways", "bank.adapt_on: 'sideways' is not one of mean, views"),
        "adapt_lr": (0, r"bank\.adapt_lr=0\.0 must be > 0"),
        "adapt_steps": (-1, r"bank\.adapt_steps=-1 must be >= 0"),
        "embeddings": ("float8", "bank.embeddings: 'float8' is not one of auto, float32"),
        "nope": (1, "unknown config key 'bank.nope'"),
    }
    for key, (value, match) in refusals.items():
        with pytest.raises(ConfigError, match=match):
            overridden(bank, "bank", **{key: value})
        assert bank.adapt_on == "views" and bank.adapt_steps == 300
