"""The anchor bank: FAISS index (the only module that imports faiss), consensus classification,
nearest-anchor search and retrieval metrics."""

from .bank import AnchorBank, BankError, embed_paths
from .classify import UNCERTAIN, Classification, classify, search
from .faiss_index import (
    FaissIndex,
    FaissIndexError,
    RemoveUnsupported,
    TrainingError,
    set_num_threads,
)
from .retrieval import (
    bank_retrieval,
    evaluate_retrieval,
    map_at_r,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)

__all__ = [
    "UNCERTAIN",
    "AnchorBank",
    "BankError",
    "Classification",
    "FaissIndex",
    "FaissIndexError",
    "RemoveUnsupported",
    "TrainingError",
    "bank_retrieval",
    "classify",
    "embed_paths",
    "evaluate_retrieval",
    "map_at_r",
    "precision_at_1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
    "search",
    "set_num_threads",
]
