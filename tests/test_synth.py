"""The synthetic cell generator: determinism, exact counts, class profiles, image format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from siamese_marrow.data.classes import CLASS_CODES, MATEK_CLASSES
from siamese_marrow.data.synth import GENERATOR_VERSION, profile_counts, render_cell, write_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    counts = {"NGS": 2, "ABE": 1, "ART": 1}
    write_dataset(tmp_path / "a", counts, seed=7, size=64)
    write_dataset(tmp_path / "b", counts, seed=7, size=64)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {
        "synth.json",
        "NGS/NGS_00000.jpg",
        "NGS/NGS_00001.jpg",
        "ABE/ABE_00000.jpg",
        "ART/ART_00000.jpg",
    }
    assert a == b
    write_dataset(tmp_path / "c", counts, seed=8, size=64)
    assert _files(tmp_path / "c")["NGS/NGS_00000.jpg"] != a["NGS/NGS_00000.jpg"]


def test_image_does_not_depend_on_other_classes_or_counts(tmp_path: Path) -> None:
    write_dataset(tmp_path / "alone", {"EOS": 3}, seed=1, size=64)
    write_dataset(tmp_path / "mixed", {"BLA": 2, "EOS": 4, "NGS": 1}, seed=1, size=64)
    for i in range(3):
        name = f"EOS/EOS_{i:05d}.jpg"
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes()


def test_render_cell_is_a_function_of_the_generator_state() -> None:
    def draw(seed: int) -> np.ndarray:
        return np.asarray(render_cell("PMO", np.random.default_rng(seed), 64))

    assert np.array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_write_dataset_follows_counts_exactly(tmp_path: Path) -> None:
    counts = {"BLA": 3, "ART": 0, "KSC": 2, "FGC": 1}
    written = write_dataset(tmp_path, counts, seed=0, size=64)
    assert written == counts
    on_disk = {d.name: len(list(d.glob("*.jpg"))) for d in tmp_path.iterdir() if d.is_dir()}
    assert on_disk == {"BLA": 3, "KSC": 2, "FGC": 1}  # no empty folder for ART
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["counts"] == counts and meta["seed"] == 0 and meta["size"] == 64
    assert meta["version"] == GENERATOR_VERSION
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_dataset_keeps_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "BLA").mkdir()
    keep = [tmp_path / "notes.txt", tmp_path / "BLA" / "real_0001.jpg"]
    for p in keep:
        p.write_bytes(b"keep me")
    write_dataset(tmp_path, {"BLA": 1}, size=64)
    assert all(p.read_bytes() == b"keep me" for p in keep)


@pytest.mark.parametrize("code", CLASS_CODES)
def test_every_class_renders_rgb_at_the_requested_size(code: str) -> None:
    img = render_cell(code, np.random.default_rng(0), 64)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.asarray(img).std() > 2  # not a blank image


def test_written_images_are_rgb_jpegs_of_the_requested_size(tmp_path: Path) -> None:
    from PIL import Image

    write_dataset(tmp_path, {"LYT": 1, "MON": 1}, size=48)
    for p in tmp_path.rglob("*.jpg"):
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (48, 48)


def test_matek_profile_keeps_real_order_and_floor() -> None:
    counts = profile_counts("matek", per_class=200)
    assert list(counts) == list(CLASS_CODES)
    assert counts["NGS"] == 200
    assert counts["NGS"] > counts["EBO"] > counts["LYT"] > counts["ART"] > counts["BAS"]
    assert counts["ABE"] == 2  # 8 real images, lifted to the floor
    real = {c: n for c, (_, n) in MATEK_CLASSES.items()}
    for a in CLASS_CODES:
        for b in CLASS_CODES:
            if real[a] > real[b]:
                assert counts[a] >= counts[b], (a, b)


def test_matek_profile_hits_an_exact_total_with_the_floor() -> None:
    for total in (63, 100, 1000, 4321):
        counts = profile_counts("matek", total=total, min_per_class=3)
        assert sum(counts.values()) == total
        assert min(counts.values()) >= 3
        assert counts["NGS"] >= counts["EBO"] >= counts["PMO"] >= counts["ABE"]
    sub = profile_counts("matek", total=50, classes=["ABE", "NGS"], min_per_class=2)
    assert sub == {"ABE": 2, "NGS": 48}
    with pytest.raises(ValueError, match="63"):
        profile_counts("matek", total=62, min_per_class=3)


def test_uniform_profile() -> None:
    assert profile_counts("uniform", per_class=5, classes=["BLA", "EOS"]) == {"BLA": 5, "EOS": 5}
    assert set(profile_counts("uniform", per_class=4).values()) == {4}
    assert profile_counts("uniform", total=7, classes=["BLA", "EOS", "LYT"]) == {
        "BLA": 3,
        "EOS": 2,
        "LYT": 2,
    }
    with pytest.raises(ValueError, match="profile"):
        profile_counts("zipf", per_class=4)


def test_unknown_class_code_raises_with_the_code(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="XYZ") as err:
        render_cell("XYZ", np.random.default_rng(0))
    assert "NGS" in str(err.value)  # lists the valid codes
    with pytest.raises(ValueError, match="FOO"):
        write_dataset(tmp_path, {"BLA": 1, "FOO": 2})
    assert not (tmp_path / "BLA").exists()  # validated before anything is written
    with pytest.raises(ValueError, match="BAR"):
        profile_counts("uniform", per_class=2, classes=["BLA", "BAR"])
