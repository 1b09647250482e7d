"""Backbone factory, pair heads and the Siamese model."""

from .backbone import Backbone, create_backbone, create_timm
from .heads import ConcatHead, Consensus, HadamardHead
from .siamese import SiameseNet, build_model

__all__ = [
    "Backbone",
    "ConcatHead",
    "Consensus",
    "HadamardHead",
    "SiameseNet",
    "build_model",
    "create_backbone",
    "create_timm",
]
