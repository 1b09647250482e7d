"""siamese-marrow: Siamese paired-image classification of bone-marrow cell images.

The public API for notebooks and scripts (the CLI, ``siamese-marrow``, wraps the same functions)::

    import siamese_marrow as sm

    run = sm.load_run("runs/bm7")                               # a trained model and its config
    bank = sm.AnchorBank.build(run, sm.load_samples("../shared/data/bm7"))
    result = sm.classify_images(bank, ["cell.jpg", pil_image])  # g over the bank's classes
    result.predictions, result.probabilities, result.support
    sm.search_images(bank, ["cell.jpg"], k=5)                   # the evidence behind a call
    bank.add(sm.expand_images(["platelets/"]), label="platelet")  # few-shot: no retraining
    bank.save("runs/bm7-bank")
    sm.fewshot_eval("runs/bm7", "../shared/data/pbc8", n_way=5, k_shots=[1, 5], n_query=15,
                    episodes=100)

Layers, each importing only those below it: ``cli -> engine -> {index, report} -> models -> data
-> config -> utils -> errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it; imported on first use, so that ``import
#: siamese_marrow`` (and the CLI's start-up) does not load torch, timm and faiss until needed
_EXPORTS = {
    "AnchorBank": ".index",
    "build_model": ".models",
    "Classification": ".index",
    "classify": ".index",
    "classify_images": ".engine.predict",
    "Config": ".config",
    "embed_images": ".models.embed",
    "expand_images": ".data.datasets",
    "fewshot_eval": ".engine.fewshot",
    "fewshot_evaluate": ".engine.fewshot",
    "load_config": ".config",
    "load_run": ".models.checkpoint",
    "load_samples": ".data.datasets",
    "LoadedRun": ".models.checkpoint",
    "open_bank": ".engine.banks",
    "Sample": ".data.datasets",
    "search": ".index",
    "search_images": ".engine.predict",
    "SiameseMarrowError": ".errors",
    "SiameseNet": ".models",
    "train": ".engine.train",
    "UNCERTAIN": ".index",
}

if TYPE_CHECKING:
    from .config import Config, load_config
    from .data.datasets import Sample, expand_images, load_samples
    from .engine.banks import open_bank
    from .engine.fewshot import fewshot_eval, fewshot_evaluate
    from .engine.predict import classify_images, search_images
    from .engine.train import train
    from .errors import SiameseMarrowError
    from .index import UNCERTAIN, AnchorBank, Classification, classify, search
    from .models import SiameseNet, build_model
    from .models.checkpoint import LoadedRun, load_run
    from .models.embed import embed_images

__all__ = [
    "AnchorBank",
    "Classification",
    "Config",
    "LoadedRun",
    "Sample",
    "SiameseMarrowError",
    "SiameseNet",
    "UNCERTAIN",
    "build_model",
    "classify",
    "classify_images",
    "embed_images",
    "expand_images",
    "fewshot_eval",
    "fewshot_evaluate",
    "load_config",
    "load_run",
    "load_samples",
    "open_bank",
    "search",
    "search_images",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'siamese_marrow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
