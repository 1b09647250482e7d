"""Datasets: ImageFolder layout (nested sub-folders allowed), CSV manifests ``path,label[,group]``.

A dataset is a list of :class:`Sample` plus a stable class list. Labels are known without
decoding any image, so samplers and splits never touch pixels.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils import brief
from .classes import label_problem
from .io import IMAGE_EXTENSIONS, load_rgb, not_regular


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, class code and (optional) group such as a patient id."""

    path: str
    label: str
    group: str | None = None


def walk_images(folder: str | Path) -> list[str]:
    """Image files under ``folder``, recursively: hidden files and folders skipped, each folder's
    files in sorted order before its sorted sub-folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(str(Path(dirpath) / name))
    return found


def expand_images(items: Sequence[str | Path]) -> list[str]:
    """Image files named directly, plus every image under named folders (:func:`walk_images`)."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = walk_images(p)
            if not found:
                raise DataError(
                    f"folder {p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            out.extend(found)
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p} does not exist")
    if not out:
        raise DataError("no images given")
    return out


def scan_folder(root: str | Path) -> list[Sample]:
    """One class per top-level folder of ``root``; images may sit in nested sub-folders.

    ``BLA/0001-1000/BLA_00001.jpg`` is a BLA image. Hidden files and folders are ignored; files
    are returned in sorted order. A symlinked class folder that leads back to ``root`` or one of
    its parents (``LOOP -> .``) would repeat the other classes' images: it is skipped, with a
    warning naming it. Symlinked folders below the class folders are not followed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    samples: list[Sample] = []
    empty: list[str] = []
    loops = [d for d in root.iterdir() if _loops_back(d, root)]
    if loops:
        warnings.warn(
            f"{root}: skipped {len(loops)} folder symlink(s) leading back to the data folder or "
            f"above it (not classes): {', '.join(sorted(d.name for d in loops)[:10])}",
            stacklevel=2,
        )
    for class_dir in sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p not in loops
    ):
        found = [Sample(p, class_dir.name) for p in walk_images(class_dir)]
        if not found:
            empty.append(class_dir.name)
        samples.extend(found)
    if empty:
        raise DataError(
            f"{root}: class folder(s) {', '.join(empty)} hold no images "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); remove them or add images"
        )
    if not samples:
        raise DataError(
            f"{root} holds no class folders with images; expected ImageFolder layout "
            "ROOT/<CLASS>/[...]/<image>.jpg or a CSV manifest path,label[,group]"
        )
    return samples


def _loops_back(entry: Path, root: Path) -> bool:
    """True when ``entry`` is a symlink to ``root`` itself or to a folder above it."""
    if not entry.is_symlink():
        return False
    try:
        target, top = entry.resolve(strict=True), root.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling or a loop of links: not a folder anyway
        return False
    return target == top or target in top.parents


def read_manifest(manifest: str | Path) -> list[Sample]:
    """Read a CSV manifest with a header ``path,label[,group]``; paths are relative to the file."""
    manifest = Path(manifest)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"manifest {manifest} cannot be read ({e.strerror or e})") from None
    # the csv module reads the whole text, so a quoted field may hold a newline
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("path", "label") if c not in columns]
    unknown = [c for c in columns if c not in ("path", "label", "group")]
    if missing or unknown:
        raise DataError(
            f"manifest {manifest}: header is {','.join(columns) or '(empty)'}; expected columns "
            f"path,label[,group]"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    base = manifest.parent
    samples: list[Sample] = []
    absent: list[str] = []
    irregular: list[str] = []
    line_no = reader.line_num + 1  # first line of the next record
    try:
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("path") or not row.get("label"):
                raise DataError(f"manifest {manifest}, line {line_no}: empty path or label")
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            kind = not_regular(p)
            if kind is not None:
                irregular.append(f"line {line_no}: {p} is {kind}")
            elif not p.is_file():
                absent.append(f"line {line_no}: {p}")
            samples.append(Sample(str(p), row["label"], row.get("group") or None))
            line_no = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"manifest {manifest}, line {line_no}: not valid CSV ({e})") from None
    for problem, rows in (("are not regular files", irregular), ("point at missing files", absent)):
        if rows:
            shown = "; ".join(rows[:5]) + (f"; ... {len(rows) - 5} more" if len(rows) > 5 else "")
            raise DataError(f"manifest {manifest}: {len(rows)} row(s) {problem}: {shown}")
    if not samples:
        raise DataError(f"manifest {manifest} has a header but no rows")
    return samples


def load_samples(source: str | Path, classes: Sequence[str] | None = None) -> list[Sample]:
    """Samples from a folder or a ``.csv`` manifest, optionally restricted to ``classes``."""
    source = Path(source)
    samples = read_manifest(source) if source.suffix.lower() == ".csv" else scan_folder(source)
    check_labels({s.label for s in samples}, str(source))
    if classes:
        present = {s.label for s in samples}
        missing = [c for c in classes if c not in present]
        if missing:
            raise DataError(
                f"{source}: requested class(es) {', '.join(missing)} not found; "
                f"present: {', '.join(sorted(present))}"
            )
        keep = set(classes)
        samples = [s for s in samples if s.label in keep]
    return samples


def check_labels(labels: Iterable[str], where: str) -> None:
    """Refuse labels that cannot name a class (:func:`.classes.label_problem`), naming them."""
    bad = [(lab, why) for lab in sorted(labels) if (why := label_problem(lab)) is not None]
    if bad:
        shown = "; ".join(f"{brief(lab)} {why}" for lab, why in bad[:5])
        more = f"; ... {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{where}: {len(bad)} class label(s) cannot be used: {shown}{more}")


def class_list(samples: Sequence[Sample]) -> list[str]:
    """The stable class order: sorted class codes."""
    return sorted({s.label for s in samples})


class CellDataset(Dataset):
    """Images with integer labels in the order of ``classes``.

    ``__getitem__`` returns ``(image, label)`` where image is what ``transform`` makes of the RGB
    PIL image (a ``(3, H, W)`` tensor with the usual transforms).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes) if classes is not None else class_list(self.samples)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({s.label for s in self.samples} - set(index))
        if unknown:
            raise DataError(
                f"label(s) {', '.join(unknown)} are not among the classes {', '.join(self.classes)}"
            )
        self.targets = [index[s.label] for s in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def get_labels(self) -> list[int]:
        """Integer labels of every sample, without decoding any image."""
        return list(self.targets)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.targets)
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}

    def load(self, i: int) -> Any:
        """The decoded RGB PIL image of sample ``i`` (no transform)."""
        return load_rgb(self.samples[i].path)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


def collate_images(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
