"""Image modes, folder and CSV datasets, stratified and grouped splits."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamese_marrow.data import datasets as ds_mod
from siamese_marrow.data.datasets import CellDataset, Sample, load_samples, read_manifest
from siamese_marrow.data.io import load_rgb
from siamese_marrow.data.splits import split_samples
from siamese_marrow.errors import DataError, ImageDecodeError


def _img(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))
    base = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE)
    return base.convert(mode)


@pytest.mark.parametrize(
    "mode,ext",
    [
        ("L", "png"),
        ("LA", "png"),
        ("P", "png"),
        ("RGBA", "png"),
        ("I;16", "png"),
        ("CMYK", "jpg"),
        ("CMYK", "tif"),
        ("RGB", "jpg"),
        ("1", "png"),
    ],
)
def test_every_mode_decodes_to_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    path = tmp_path / f"x.{ext}"
    _img(mode).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith(mode[:1])
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    rgb = np.asarray(load_rgb(tmp_path / "a.png"))
    assert rgb[0, 0, 0] == 0 and rgb[1, 0, 0] == 255 and 120 < rgb[0, 1, 0] < 135


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_bad_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        load_rgb(bad)


def _write_tree(root: Path, spec: dict[str, int], nested: bool = False) -> None:
    for label, n in spec.items():
        for i in range(n):
            sub = root / label / (f"{i // 2:04d}-batch" if nested else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6), (i * 10 % 255, 0, 0)).save(sub / f"{label}_{i:05d}.jpg")


def test_nested_image_folder(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"BLA": 5, "EOS": 3}, nested=True)
    (tmp_path / "BLA" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "BLA" / "notes.txt").write_text("ignored")
    samples = load_samples(tmp_path)
    assert Counter(s.label for s in samples) == {"BLA": 5, "EOS": 3}
    assert any("0001-batch" in s.path for s in samples)
    ds = CellDataset(samples)
    assert ds.classes == ["BLA", "EOS"]
    x, y = ds[0]
    assert x.mode == "RGB" and y == 0


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"BLA": 2})
    (tmp_path / "EOS").mkdir()
    with pytest.raises(DataError, match="EOS"):
        load_samples(tmp_path)


def test_csv_manifest_relative_paths_and_groups(tmp_path: Path) -> None:
    _write_tree(tmp_path / "imgs", {"BLA": 2, "LYT": 2})
    rows = ["path,label,group"]
    for p in sorted((tmp_path / "imgs").rglob("*.jpg")):
        rows.append(f"{p.relative_to(tmp_path)},{p.parent.name},pat{len(rows) % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path / "m.csv")
    assert len(samples) == 4 and {s.group for s in samples} == {"pat0", "pat1"}
    assert all(Path(s.path).is_file() for s in samples)


@pytest.mark.parametrize(
    "header,match", [("file,label", "missing: path"), ("path,label,patient", "unknown: patient")]
)
def test_csv_bad_columns(tmp_path: Path, header: str, match: str) -> None:
    (tmp_path / "m.csv").write_text(f"{header}\nx.jpg,BLA\n")
    with pytest.raises(DataError, match=match):
        read_manifest(tmp_path / "m.csv")


def test_csv_missing_files_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label\nnope.jpg,BLA\n")
    with pytest.raises(DataError, match="nope.jpg"):
        read_manifest(tmp_path / "m.csv")


def test_labels_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tree(tmp_path, {"A": 3, "B": 2})
    ds = CellDataset(load_samples(tmp_path))

    def boom(path: object) -> None:
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(ds_mod, "load_rgb", boom)
    assert ds.get_labels() == [0, 0, 0, 1, 1]
    assert ds.class_counts() == {"A": 3, "B": 2}


def _samples(counts: dict[str, int], groups: int = 0) -> list[Sample]:
    out = []
    for label, n in counts.items():
        for i in range(n):
            g = f"p{(i * 7 + len(label)) % groups}" if groups else None
            out.append(Sample(f"/x/{label}/{i}.jpg", label, g))
    return out


def test_stratified_split_by_seed() -> None:
    samples = _samples({"A": 50, "B": 20, "C": 1})
    s1 = split_samples(samples, 0.2, 0.1, seed=3)
    s2 = split_samples(samples, 0.2, 0.1, seed=3)
    assert s1 == s2
    assert split_samples(samples, 0.2, 0.1, seed=4)["val"] != s1["val"]
    assert Counter(s.label for s in s1["val"]) == {"A": 10, "B": 4}
    assert Counter(s.label for s in s1["test"]) == {"A": 5, "B": 2}
    assert [s.label for s in s1["train"]].count("C") == 1  # a single image stays in train
    all_paths = [s.path for part in s1.values() for s in part]
    assert sorted(all_paths) == sorted(s.path for s in samples)


def test_grouped_split_keeps_groups_apart() -> None:
    samples = _samples({"A": 60, "B": 40, "C": 30}, groups=12)
    parts = split_samples(samples, 0.2, 0.2, seed=0)
    groups = {k: {s.group for s in v} for k, v in parts.items()}
    assert groups["train"] and groups["val"] and groups["test"]
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sum(len(v) for v in parts.values()) == len(samples)
    for name in ("val", "test"):
        assert {s.label for s in parts[name]} == {"A", "B", "C"}


def test_partial_groups_refused() -> None:
    samples = _samples({"A": 4}) + [Sample("/x/g.jpg", "A", "p1")]
    with pytest.raises(DataError, match="no group"):
        split_samples(samples, 0.2)


# --- issue 9, items 9 and 10: manifests, special files, symlink loops, EXIF orientation ---


def test_csv_quoted_newline_in_a_path_survives(tmp_path: Path) -> None:
    (tmp_path / "two\nlines").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "two\nlines" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_text('path,label\n"two\nlines/a.png",BLA\nb.png,EOS\n,\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 5: empty path or label"):  # lines counted right
        read_manifest(m)
    m.write_text('path,label\r\n"two\nlines/a.png",BLA\r\nb.png,EOS\r\n', encoding="utf-8")
    samples = read_manifest(m)
    assert [s.path for s in samples] == [
        str(tmp_path / "two\nlines" / "a.png"),
        str(tmp_path / "b.png"),
    ]
    assert [s.label for s in samples] == ["BLA", "EOS"]


def test_csv_rows_naming_special_files_are_not_called_missing(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    m = tmp_path / "m.csv"
    rows = ["ok.png,BLA", "pipe.png,BLA", "/dev/zero,EOS", "folder.png,EOS", "gone.png,EOS"]
    m.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        read_manifest(m)
    msg = str(info.value)
    assert "3 row(s) are not regular files" in msg and "missing" not in msg, msg
    assert f"line 3: {fifo} is a FIFO" in msg and "line 4: /dev/zero is a device" in msg
    assert "folder.png is a folder" in msg
    m.write_text("path,label\nok.png,BLA\ngone.png,EOS\n")
    with pytest.raises(DataError, match="1 row.s. point at missing files: line 3: .*gone.png"):
        read_manifest(m)
    for special in (fifo, Path("/dev/zero")):  # decoding would block or never end
        with pytest.raises(ImageDecodeError, match="is not a regular file but a"):
            load_rgb(special)


def test_csv_field_too_large_is_a_data_error(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text('path,label\n"' + "x" * 200_000 + '",BLA\n')
    with pytest.raises(DataError, match="line 2: not valid CSV"):
        read_manifest(m)


def test_symlink_loop_at_the_root_is_not_a_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for code in ("BLA", "EOS"):
        (root / code).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / code / "a.png")
    (root / "LOOP").symlink_to(".")
    (root / "UP").symlink_to("..")
    (root / "EOS" / "INNER").symlink_to("..")  # below a class: never followed
    with pytest.warns(UserWarning, match=r"skipped 2 folder symlink.*LOOP, UP"):
        samples = load_samples(root)
    assert Counter(s.label for s in samples) == {"BLA": 1, "EOS": 1}


def test_symlinked_class_folder_elsewhere_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "store" / "BAS"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(elsewhere / "a.png")
    root = tmp_path / "data"
    (root / "BLA").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "BLA" / "a.png")
    (root / "BAS").symlink_to(elsewhere)
    assert Counter(s.label for s in load_samples(root)) == {"BLA": 1, "BAS": 1}


@pytest.mark.parametrize(
    "orientation,size", [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))]
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, size: tuple[int, int]
) -> None:
    """A 40x20 photo whose left half is red, right half blue, stored with an EXIF orientation."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    img = load_rgb(path)
    assert img.size == size
    px = np.asarray(img).astype(int)
    red_at = {1: (10, 5), 3: (10, 35), 6: (5, 10), 8: (35, 10)}[orientation]  # (row, col)
    r, g, b = px[red_at]
    assert r > 200 and b < 60, (orientation, px[red_at])


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own, while decoding
def test_damaged_exif_does_not_refuse_the_pixels(tmp_path: Path) -> None:
    path = tmp_path / "bad_exif.jpg"
    Image.new("RGB", (8, 6), (0, 128, 0)).save(path, exif=b"Exif\x00\x00II*\x00garbage")
    assert load_rgb(path).size == (8, 6)
