"""The one exception type users see: a clear message, no traceback, a non-zero exit code."""

from __future__ import annotations


class SiameseMarrowError(Exception):
    """An error caused by input (a file, a value, a request) that the user can fix.

    The message names the file or value and says what to do. ``cli.main`` prints it without a
    traceback and exits with status 2.
    """


class ConfigError(SiameseMarrowError, ValueError):
    """A configuration key or value that is unknown or invalid."""


class DataError(SiameseMarrowError, ValueError):
    """A dataset, manifest or image that cannot be used."""


class ImageDecodeError(DataError):
    """One image file that cannot be decoded into RGB."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(SiameseMarrowError):
    """A checkpoint that is missing, damaged or does not fit the model."""


class TrainingError(SiameseMarrowError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class FaissIndexError(SiameseMarrowError):
    """An index that cannot be built, trained, searched or read as asked."""


class IndexTrainingError(FaissIndexError):
    """Too few vectors to train an IVF / PQ index."""


class RemoveUnsupported(FaissIndexError):
    """The index type (e.g. HNSW) cannot remove vectors; rebuild it from the kept vectors."""


class BankError(SiameseMarrowError):
    """A bank that is missing, damaged, or does not belong to the model given."""
