"""Small shared helpers: atomic writes, writability checks, bounded values in messages, bounded
YAML loading, range-checked argparse types, hashing, devices."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import math
import os
import reprlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    A crash or kill at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file the user asked for, not the temporary one
        e.filename = str(path)
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp_path):  # a full disk names no file
            e.filename, e.filename2 = str(path), None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an :class:`OSError` raised inside the block ``path`` as its file name when it has none
    (a write or close that fails on a full disk names no file), so the message can name it."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(d: Path) -> None:
    """Make a rename or new entry in folder ``d`` durable (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    # surrogateescape: a file name that is not UTF-8 is written back as its original bytes
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return name


#: Longest value repeated in an error message, in characters.
BRIEF_LIMIT = 200

_brief_repr = reprlib.Repr()
_brief_repr.maxlevel = 3
_brief_repr.maxstring = _brief_repr.maxother = _brief_repr.maxlong = BRIEF_LIMIT
_brief_repr.maxlist = _brief_repr.maxtuple = _brief_repr.maxdict = _brief_repr.maxset = 8


def brief(value: Any, limit: int = BRIEF_LIMIT) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters.

    A long string is cut with a note of its full length; a container is shown a few levels and
    items deep without building its whole repr, so a hostile value (a YAML alias bomb, a
    megabyte ``--set`` value) cannot blow up the message.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters in all)"
    text = _brief_repr.repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if isinstance(value, (list, tuple, dict, set)):
        text += f" ({type(value).__name__} of {len(value):,} items)" if len(value) > 8 else ""
    return text


def describe_os_error(e: OSError) -> str:
    """One line for a failed read or write: the path, the system's reason and what to do."""
    where = f"{e.filename}" if e.filename is not None else ""
    if e.filename2 is not None:
        where += f" -> {e.filename2}"
    reason = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "; free some space or choose another folder",
        errno.EDQUOT: "; free some space or choose another folder",
        errno.EROFS: "; choose a folder you can write to",
        errno.EACCES: "; check the permissions or choose another folder",
        errno.EPERM: "; check the permissions or choose another folder",
    }.get(e.errno or 0, "")
    return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"


def printable(text: Any) -> str:
    """``str(text)`` that every renderer and encoder accepts: bytes of a file name that are not
    UTF-8 (held as lone surrogates) are shown as ``\\xNN`` escapes instead."""
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def check_writable(target: str | Path, what: str = "output", *, beside: bool = False) -> None:
    """Fail now, naming ``target``, if it cannot be written: before the work, not after it.

    Creates, writes and removes a small probe file in ``target`` when it is an existing folder,
    else in its nearest existing parent (where the first file or folder will be made). Catches a
    read-only file system, missing permissions, a path under a regular file and a full disk.
    Raises :class:`OSError` with ``filename`` set to ``target``.

    Folders replaced as a whole (banks: a new copy is made beside the old one and renamed over
    it) pass ``beside=True``: the probe then goes into the folder's parent.
    """
    target = Path(target)
    if target.is_dir() and not beside:
        where = target
    else:
        where = target.absolute().parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise OSError(
                errno.ENOTDIR, f"{where} is not a folder, so the {what} cannot be made", str(target)
            )
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=where)
    except OSError as e:
        raise OSError(
            e.errno, f"{e.strerror} (cannot create files in {where})", str(target)
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (in {where})", str(target)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_own_folder(
    folder: str | Path, markers: tuple[str, ...], what: str, force: bool = False
) -> None:
    """Refuse to write into ``folder`` when it exists, is not empty and holds none of
    ``markers`` (the files that make it ``what``: a run, a report, ...), unless ``force``."""
    folder = Path(folder)
    if force or not folder.is_dir():
        return
    try:
        entries = [e.name for e in os.scandir(folder)]
    except OSError:
        return  # unreadable: the write itself will say why
    if entries and not any((folder / m).exists() for m in markers):
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"{folder} is not empty ({shown}) and is not {what}; choose a new or empty folder, "
            "or pass --force to write into it anyway"
        )


def refuse_overwriting_inputs(output: str | Path | None, inputs: Iterable[str | Path]) -> None:
    """Refuse an ``output`` path that is one of the ``inputs`` (an image, an anchor), also
    through symbolic links. Only inputs with the output's file name are resolved (fast for
    banks of millions of anchors)."""
    if output is None:
        return
    out = os.path.realpath(output)
    names = {os.path.basename(str(output)), os.path.basename(out)}
    for item in inputs:
        if os.path.basename(str(item)) in names and os.path.realpath(item) == out:
            raise ConfigError(
                f"{brief(str(output))} is one of the input images; write the output elsewhere"
            )


# --- YAML with bounded alias expansion (config files and --set values) ---------------------

#: Most YAML nodes a config file or ``--set`` value may hold once its aliases are expanded.
MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses recursive aliases and documents whose aliases expand to
    more than :data:`MAX_YAML_NODES` nodes (a "billion laughs" alias bomb), before anything is
    built from them."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _count_nodes(node)
        return node


def _count_nodes(root: yaml.Node) -> int:
    """Nodes under ``root`` with every alias expanded, counted without expanding them."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to itself (a recursive structure)")
        open_nodes.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if n > MAX_YAML_NODES:
            raise ConfigError(
                f"YAML expands to more than {MAX_YAML_NODES:,} values (aliases repeating "
                "aliases?); a config needs a few dozen"
            )
        sizes[key] = n
        return n

    return size(root)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with bounded alias expansion and nesting depth."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError:  # a ValueError too
        raise
    except RecursionError:
        raise ConfigError("YAML nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise yaml.YAMLError(f"a value cannot be converted ({str(e)[:200]})") from None


# --- argparse type= functions: numeric options range-checked while parsing ------------------


def arg_number(
    kind: type = int,
    low: float | None = None,
    high: float | None = None,
    *,
    low_strict: bool = False,
    high_strict: bool = False,
) -> Callable[[str], float]:
    """A ``type=`` function parsing ``kind`` (int or float) within ``[low, high]`` (or the open
    ends when ``low_strict`` / ``high_strict``); floats must be finite."""

    if low is not None and high is not None:
        allowed = f"in {'(' if low_strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_strict else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if high_strict else '<='} {high:g}"
    else:
        allowed = "any"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {brief(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {brief(text)}")
        too_low = low is not None and (value < low or (low_strict and value == low))
        too_high = high is not None and (value > high or (high_strict and value == high))
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def arg_int_list(low: int = 1) -> Callable[[str], list[int]]:
    """A ``type=`` function for a comma-separated list of integers ``>= low``, e.g. ``1,5``."""
    item = arg_number(int, low)

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts) or not all(parts):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low} like 1,5, got {brief(text)}"
            )
        values: list[int] = []
        for p in parts:
            try:
                values.append(int(item(p)))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{brief(text)}: {e}") from None
        return values

    parse.__name__ = "list of integers"
    return parse


#: Shared instances for the usual cases.
arg_count = arg_number(int, 1)  # how many of something: at least 1
arg_workers = arg_number(int, 0, 256)  # worker processes: 0 = in the main process
arg_seed = arg_number(int, 0, 2**63 - 1)
arg_probability = arg_number(float, 0, 1)
