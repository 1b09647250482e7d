"""The model: backbone factory, pair heads, the Siamese model with its consensus over anchors
(``SiameseNet.anchor_consensus``, the one home of g), checkpoints (``checkpoint``: save, load,
verify) and embedding of data sets, files and images (``embed``)."""

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
