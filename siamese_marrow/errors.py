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
