"""The anchor bank's section of the configuration (``bank.*``), and the size strings it takes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str | int | float, where: str = "bank.memory_budget") -> int:
    """Bytes in a size such as ``"4GB"``, ``"512MB"``, ``"1.5G"``, ``"2GiB"`` or a plain number of
    bytes (decimal units; ``KiB``/``MiB``/``GiB`` are binary)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = int(text)
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ConfigError(f"{where}={text!r} is not a size such as 4GB, 512MB or 2GiB")
        unit = (m.group(2) or "").lower()
        scale = _UNITS[unit[:1]] if "i" not in unit else 2 ** (10 * "_kmgt".index(unit[0]))
        value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ConfigError(f"{where}={text!r} must be a positive size")
    return value


def _choices(*values: str, default: str) -> Any:
    return field(default=default, metadata={"choices": values})


#: What bank.adapt_on may be: the prototypes adapt on each anchor's embedding, or on its 8 views.
ADAPT_ON = ("mean", "views")


@dataclass
class BankConfig:
    """The FAISS anchor bank and consensus classification."""

    # FAISS index: "auto" (chosen from the number of anchors, the dimension and memory_budget,
    # then tuned to target_recall; re-chosen as the bank grows) or a FAISS factory string: Flat
    # (exact), HNSW32, IVF1024,Flat, IVF1024,SQfp16, OPQ32,IVF1024,PQ32, ...
    index: str = "auto"
    # bank.index=auto: memory the index plus the stored embeddings may take ("4GB", "512MB").
    memory_budget: str = "4GB"
    # bank.index=auto: recall@10 against exact search that nprobe / efSearch are tuned to, on a
    # sample of the bank's own anchors.
    target_recall: float = 0.95
    # bank.index=auto: only indexes that remove anchors in place (IVF, Flat; not HNSW, which
    # bank remove must rebuild from the stored embeddings).
    removable: bool = True
    # bank.index=auto: choose the index again when the bank has grown (or shrunk) by this factor
    # since the last choice.
    rechoose_factor: float = 2.0
    # How the stored embeddings are kept: float32, float16 (half the memory; cosines differ by
    # ~1e-3) or auto (float16 from 200,000 anchors).
    embeddings: str = _choices("auto", "float32", "float16", default="auto")
    # Candidates taken from the index per query before the pair heads rescore them.
    top_m: int = 64
    # Anchors per class among the candidates: each class's own nearest ones (see shortlist).
    per_class_k: int = 5
    # balanced: every class is scored on exactly its min(per_class_k, size) nearest anchors
    # (found per class, through the index for large classes), so mean and top-k aggregation do
    # not depend on class size; top_m: the top-M plus the nearest anchors of classes missing
    # from it (big classes get more candidates: biased towards them).
    shortlist: str = _choices("balanced", "top_m", default="balanced")
    # Score every anchor instead of a FAISS shortlist (exact consensus). With model.aggregate=mean
    # a class's score then does not depend on how many anchors it has, which few-shot classes
    # need: top-M or top-k aggregation favours classes with many anchors. Costs
    # O(anchors x head width) per query: fine up to ~1e5 anchors.
    score_all_anchors: bool = False
    # Calls whose top probability is below this are "uncertain" (0 = never).
    abstain_below: float = 0.0
    # Embed anchors and queries as the mean of their 8 dihedral views (rotations by 90 degrees,
    # mirrored or not): cells have no up; 8x the embedding time.
    tta: bool = False
    # With model.aggregate=proto: Adam steps that adapt the class prototypes to the bank's own
    # anchors through the heads before classifying (0 = the plain class means; models/adapt.py).
    adapt_steps: int = 0
    # The Adam learning rate of those steps (the prototypes are unit vectors; pbc8 5-shot 0.711 at
    # 0.005-0.02 alike, 0.699 at 0.05: README).
    adapt_lr: float = 0.01
    # What the prototypes are adapted on: each anchor's embedding ("mean": its TTA mean when
    # bank.tta) or its 8 dihedral views ("views": 8x the examples for a 1-shot class; the bank
    # then keeps every anchor's 8 view embeddings, views.npy, 4x the memory of float32
    # embeddings at float16).
    adapt_on: str = _choices(*ADAPT_ON, default="mean")
    # With model.aggregate=proto: up to this many prototypes a class, the k-means centres of its
    # anchors (a cell type that looks several ways gets one a look; a query scores its best), a
    # class of n anchors getting min(this, n // 10) and at least one, so few-shot classes keep
    # one; all of them adapt (models/adapt.py). 1 = the class mean. Few-shot episodes keep one.
    prototypes_per_class: int = 1
    # classify: images embedded and classified at a time, so a large set of query images never
    # sits in memory at once.
    stream_batch: int = 2048
