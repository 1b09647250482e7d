"""A bank directory's files: the manifest's format, the model check, reading the embeddings
without a copy, and refusing to write over something that is not a bank (:mod:`.bank` holds the
bank's state; :mod:`.store` the locking and atomic replacement)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import BankError, CheckpointError
from ..models.checkpoint import LoadedRun, load_run
from ..utils import naming
from .store import MANIFEST, read_snapshot

FORMAT = "siamese-marrow-anchor-bank"
#: 1: float32 embeddings; 2: embeddings float32 or float16 (``embeddings_dtype``), index choice
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
BANK_FILES = ("index.faiss", "embeddings.npy", "anchors.json", "config.yaml")
#: the anchors' view embeddings, in a bank with bank.adapt_on=views only
VIEWS_FILE = "views.npy"


def check_target(target: Path, replace: bool) -> None:
    """Refuse to save over something that is not a bank, or over a bank unless ``replace``."""
    if target.exists() and not target.is_dir():
        raise BankError(f"{target} exists and is not a folder; choose another path")
    if (target / MANIFEST).is_file():
        if not replace:
            raise BankError(
                f"{target} already holds an anchor bank; add classes to it with bank add, or "
                "pass --force (replace=True) to replace it"
            )
    elif target.is_dir() and any(target.iterdir()):
        raise BankError(
            f"{target} exists, is not empty and is not an anchor bank (no {MANIFEST}); "
            "choose another path"
        )


def load_model_of(
    target: Path,
    manifest: dict[str, Any],
    run: str | Path | None,
    checkpoint: str | None,
    device: str,
) -> LoadedRun:
    run_dir = Path(run) if run is not None else Path(manifest["run"])
    name = checkpoint or manifest["checkpoint"]
    try:
        return load_run(run_dir, name, device=device)
    except CheckpointError as e:
        raise BankError(
            f"cannot load the model of bank {target} from run {run_dir} "
            f"(checkpoint {name}): {e}; pass --run RUN with the run the bank was built "
            f"with (weights sha256 {manifest['weights_sha256'][:12]}...)"
        ) from None


def npy_from_bytes(blob: bytes | bytearray, where: Path, ndim: int = 2) -> np.ndarray:
    """A float32 or float16 ``.npy`` file's array of ``ndim`` dimensions over its bytes (no copy;
    never unpickles)."""
    f = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
    except ValueError as e:
        raise BankError(f"{where} cannot be read ({e})") from None
    if dtype not in (np.float32, np.float16) or fortran or len(shape) != ndim:
        want = "(N, D)" if ndim == 2 else f"{ndim}-d"
        raise BankError(
            f"{where} cannot be read: it holds {dtype} {shape}, not float32 or float16 {want}"
        )
    count = int(np.prod(shape))
    size = count * dtype.itemsize
    if len(blob) - f.tell() != size:
        raise BankError(f"{where} is truncated: {dtype} {shape} needs {size} bytes of data")
    return np.frombuffer(blob, dtype, count, offset=f.tell()).reshape(shape)


def views_from_bytes(
    blob: bytes | bytearray | None, keeps: bool, n: int, dim: int, target: Path
) -> np.ndarray | None:
    """The saved view embeddings ``(n, 8, dim)`` of a bank with bank.adapt_on=views
    (``keeps``), checked against its ``n`` anchors; None for other banks."""
    if not keeps:
        return None
    if blob is None:
        raise BankError(
            f"{target} was saved with bank.adapt_on=views but has no {VIEWS_FILE}; rebuild the bank"
        )
    views = npy_from_bytes(blob, target / VIEWS_FILE, ndim=3)
    if views.shape != (n, 8, dim):
        raise BankError(
            f"{target / VIEWS_FILE} holds {views.dtype} {views.shape}; expected (N={n}, 8, "
            f"{dim}), one row per anchor; rebuild the bank"
        )
    return views


def read_manifest(target: str | Path) -> dict[str, Any]:
    """The checked ``manifest.json`` of a bank folder (read without changing anything)."""
    return read_snapshot(target, (), check_manifest).manifest


def check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """``manifest`` (parsed from ``path``; None when the file is missing) with its format
    checked."""
    target = path.parent
    if manifest is None:
        raise BankError(
            f"{target} is not an anchor bank (no {MANIFEST}); build one with "
            "siamese-marrow bank build --run RUN --data DIR --out BANK"
        )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BankError(f"{path} is not an anchor-bank manifest")
    if manifest.get("format_version") not in READS_VERSIONS:
        raise BankError(
            f"{path} has format version {manifest.get('format_version')}; this version of "
            f"siamese-marrow reads versions {', '.join(map(str, READS_VERSIONS))}; rebuild the bank"
        )
    missing = [
        k
        for k in ("run", "checkpoint", "weights_sha256", "config_digest", "files", "index_factory")
        if k not in manifest
    ]
    if missing:
        raise BankError(f"{path} lacks {', '.join(missing)}; rebuild the bank")
    return manifest


def check_model(manifest: dict[str, Any], loaded_run: LoadedRun, where: Path) -> None:
    """Refuse a model other than the one the bank was built with, naming both."""
    have_w = loaded_run.meta.get("weights_sha256", "?")
    have_c = loaded_run.cfg.digest()
    want_w, want_c = manifest["weights_sha256"], manifest["config_digest"]
    if have_w != want_w or have_c != want_c:
        what = "weights" if have_w != want_w else "model config"
        raise BankError(
            f"bank {where} was built with run {manifest['run']} ({manifest['checkpoint']}: weights "
            f"sha256 {want_w[:16]}, config digest {want_c[:16]}); the model given, run "
            f"{loaded_run.run} ({loaded_run.name}), has weights sha256 {have_w[:16]}, config "
            f"digest {have_c[:16]}: its {what} differ(s). Use the run the bank was built with, or "
            "rebuild the bank with this run"
        )


@contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for writing, flushed and fsynced when the block ends (errors name it)."""
    with naming(path), open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_file(path: Path, data: bytes) -> None:
    with durable_file(path) as f:
        f.write(data)
