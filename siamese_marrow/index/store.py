"""A bank directory on disk: one writer at a time, readers that never change anything.

Writers hold an exclusive OS file lock, ``.BANK.lock`` beside ``BANK`` (``fcntl.flock`` through
the ``filelock`` package: released by the kernel when a process dies, so a crash never leaves
the bank locked). A writer first finishes or undoes a save that an earlier writer was killed in
(:func:`recover`), then writes the new bank into a temporary sibling ``.BANK.tmp-*``, fsyncs it,
renames ``BANK`` to ``.BANK.bak`` and the new folder to ``BANK``, and deletes the backup. At every
moment one complete bank is on disk: ``BANK``, or ``.BANK.bak`` between the two renames.

Readers take no lock and write nothing. :func:`read_snapshot` opens the folder once and reads
every file through that one handle, so all the files it returns belong to one save even when a
writer renames a new bank into place meanwhile; when ``BANK`` is missing it reads the backup, and
when a writer deletes the folder it is reading, it starts again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import BankError
from ..utils import fsync_dir, umask

log = logging.getLogger("siamese_marrow")

MANIFEST = "manifest.json"

#: How long a writer waits for another writer of the same bank before giving up (seconds).
LOCK_TIMEOUT = 3600.0

#: How often a reader starts again when a writer deletes the folder it is reading.
READ_ATTEMPTS = 50


def backup_of(target: Path) -> Path:
    return target.parent / f".{target.name}.bak"


def lock_of(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def is_bank(target: Path) -> bool:
    """True when ``target`` (or its backup, mid-save) holds a bank."""
    return (target / MANIFEST).is_file() or (backup_of(target) / MANIFEST).is_file()


@contextlib.contextmanager
def writer_lock(directory: str | Path, timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the bank's writer lock (re-entrant within a thread); yields the absolute bank path.

    On entry an interrupted save is finished or undone, so the writer starts from one complete
    bank. Raises :class:`BankError` naming the lock file after ``timeout`` seconds.
    """
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_of(target), is_singleton=True)
    try:
        lock.acquire(timeout=1.0)
    except Timeout:
        log.warning("waiting for another process that is writing the bank %s", target)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise BankError(
                f"another process has been writing the bank {target} for over {timeout:.0f} s "
                f"(it holds {lock_of(target)}); try again when it has finished"
            ) from None
    try:
        recover(target)
        yield target
    finally:
        lock.release()


def recover(target: Path) -> None:
    """Finish or undo an interrupted save (writers only, under :func:`writer_lock`): a complete
    ``BANK`` makes the backup redundant; a missing one is replaced by the backup; temporary folders
    of killed writers are deleted."""
    backup = backup_of(target)
    if backup.exists():
        if (target / MANIFEST).is_file():
            shutil.rmtree(backup, ignore_errors=True)  # the new bank made it; drop the old one
        else:
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            if not target.exists():
                os.rename(backup, target)  # died between the two renames: the old bank is back
                fsync_dir(target.parent)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # only writers make these, and we are the one


def replace_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a new version of the folder ``target`` with ``write(tmp)`` and swap it into place
    atomically (see the module docstring); call under :func:`writer_lock`."""
    parent = target.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; give the usual folder mode
    try:
        write(tmp)
        fsync_dir(tmp)
        backup = backup_of(target)
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
            os.rename(target, backup)
        os.rename(tmp, target)
        fsync_dir(parent)
        if backup.exists():
            shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class Snapshot:
    """The files of one save of a bank, read through one folder handle."""

    directory: Path  # BANK, or its backup when read mid-save
    manifest: dict[str, Any]
    files: dict[str, bytearray]


class _Vanished(Exception):
    """The folder being read was deleted or replaced by a writer: read again. The message says
    what was seen, for the error raised when it never settles."""


def read_snapshot(
    directory: str | Path,
    names: tuple[str, ...],
    check: Callable[[Path, Any], dict[str, Any]],
    optional: tuple[str, ...] = (),
) -> Snapshot:
    """Read ``manifest.json`` (parsed, then checked by ``check(path, data)``, which raises for a
    folder that is not a bank when ``data`` is None) and the files ``names`` of one save, each
    verified against the sha256 the manifest records for it; of ``optional``, those the manifest
    lists (then as required as the others)."""
    target = Path(directory).absolute()
    backup = backup_of(target)
    seen = "it kept changing while it was read"
    for _ in range(READ_ATTEMPTS):
        for candidate in (target, backup):
            try:
                snap = _read_once(candidate, names, check, backup, optional)
            except _Vanished as e:
                seen = str(e) or seen
                continue
            if snap is not None:
                return snap
        if not target.exists() and not backup.exists():
            check(target / MANIFEST, None)
        time.sleep(0.02)
    raise BankError(f"the bank {target} cannot be read: {seen}")


def _read_once(
    directory: Path,
    names: tuple[str, ...],
    check: Callable[[Path, Any], dict[str, Any]],
    backup: Path,
    optional: tuple[str, ...] = (),
) -> Snapshot | None:
    """One save read through one folder handle; None when ``directory`` holds no bank but its
    backup may; :class:`_Vanished` when a writer moved or deleted the folder meanwhile."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise BankError(f"{directory} is not a folder; a bank is a folder") from None
    try:
        blob = _read_at(fd, MANIFEST)
        if blob is None:
            if directory == backup or not _still_at(fd, directory):
                raise _Vanished()  # a writer is deleting the backup, or moved the bank away
            if directory != backup and not backup.exists():
                check(directory / MANIFEST, None)  # raises: not a bank
            return None
        try:
            data = json.loads(blob)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BankError(f"{directory / MANIFEST} is damaged (not valid JSON: {e})") from None
        manifest = check(directory / MANIFEST, data)
        files: dict[str, bytearray] = {}
        listed = [n for n in optional if n in manifest["files"]]
        for name in (*names, *listed):
            content = _read_at(fd, name)
            expected = manifest["files"].get(name)
            if content is None or expected is None:
                problem = f"{directory / name} is missing; the bank is incomplete, rebuild it"
                # a backup is complete or being deleted by a writer; so is a bank moved away
                if content is None and (directory == backup or not _still_at(fd, directory)):
                    raise _Vanished(problem)
                raise BankError(problem)
            if hashlib.sha256(content).hexdigest() != expected:
                raise BankError(
                    f"{directory / name} does not match the sha256 recorded in "
                    f"{directory / MANIFEST} (damaged or tampered); rebuild the bank or restore "
                    "the file"
                )
            files[name] = content
        return Snapshot(directory, manifest, files)
    finally:
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the folder open as ``fd`` is still the one named ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _read_at(fd: int, name: str) -> bytearray | None:
    """The bytes of ``name`` in the folder open as ``fd`` (a writable buffer, so arrays made over
    it need no copy); None when it does not exist."""
    try:
        f = os.open(name, os.O_RDONLY, dir_fd=fd)
    except FileNotFoundError:
        return None
    with os.fdopen(f, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(size)
        n = fh.readinto(buf)
        rest = fh.read()  # a file that grew while it was read (never a bank file)
        return buf[:n] + rest if n != size or rest else buf
