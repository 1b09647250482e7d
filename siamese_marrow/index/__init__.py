"""The anchor bank: FAISS index (the only module that imports faiss), the bank's state and files,
consensus classification and nearest-anchor search over it, and retrieval metrics."""

from ..errors import BankError, FaissIndexError, IndexTrainingError, RemoveUnsupported
from .bank import AnchorBank
from .calibration import apply_temperature, bank_temperature, fit_temperature
from .classify import UNCERTAIN, Classification, classify, search
from .faiss_index import FaissIndex, set_num_threads
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
    "IndexTrainingError",
    "RemoveUnsupported",
    "apply_temperature",
    "bank_retrieval",
    "bank_temperature",
    "classify",
    "evaluate_retrieval",
    "fit_temperature",
    "map_at_r",
    "precision_at_1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
    "search",
    "set_num_threads",
]
