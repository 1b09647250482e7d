"""Fuzzing image decoding: whatever bytes a file holds, ``load_rgb`` returns an RGB image or
raises ``ImageDecodeError`` naming the file, and returns quickly (issue 6).

Inputs are random bytes, random bytes behind a real format's header, and valid JPEG, PNG, GIF,
TIFF, BMP and WebP files with bytes flipped, overwritten, inserted, deleted or cut off. The runs
are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import faulthandler
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from siamese_marrow.data.io import load_rgb
from siamese_marrow.errors import ImageDecodeError


def _seed_files() -> dict[str, bytes]:
    """Small valid files, one per format and a few modes and codecs."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16))
    out: dict[str, bytes] = {}
    for name, img, fmt, kw in [
        ("rgb.jpg", rgb, "JPEG", {"quality": 80}),
        ("progressive.jpg", rgb, "JPEG", {"progressive": True}),
        ("rgba.png", rgba, "PNG", {}),
        ("grey16.png", grey16, "PNG", {}),
        ("palette.gif", rgb.convert("P"), "GIF", {}),
        ("rgb.tif", rgb, "TIFF", {}),
        ("deflate.tif", rgb, "TIFF", {"compression": "tiff_adobe_deflate"}),
        ("rgb.bmp", rgb, "BMP", {}),
        ("lossy.webp", rgb, "WEBP", {"quality": 80}),
        ("lossless.webp", rgba, "WEBP", {"lossless": True}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


#: Pillow warns about odd TIFF tags and the like; only the outcome matters here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEEDS = _seed_files()
NAMES = sorted(SEEDS)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed file with 1-6 random edits."""
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # e.g. a width, height or length field made extreme
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return name, bytes(data)


@st.composite
def header_then_noise(draw: st.DrawFn) -> tuple[str, bytes]:
    """The first bytes of a real file (so the decoder is chosen), then random bytes."""
    name = draw(st.sampled_from(NAMES))
    keep = draw(st.integers(1, min(64, len(SEEDS[name]))))
    return name, SEEDS[name][:keep] + draw(st.binary(max_size=512))


FUZZ = settings(
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def watchdog() -> None:
    """A decoder stuck in C never returns to hypothesis' deadline check: dump the stacks and
    exit instead of hanging CI."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def check_decodes_or_refuses(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        img = load_rgb(path)
    except ImageDecodeError as e:
        assert str(path) in str(e) and e.path == str(path)
        return
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert img.width > 0 and img.height > 0
    img.tobytes()  # the pixels are really there


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_seed_files_decode(scratch: Path) -> None:
    for name, data in SEEDS.items():
        img = load_rgb(_write(scratch / name, data))
        assert img.mode == "RGB" and img.size == (16, 12), name


@settings(FUZZ, max_examples=400)
@given(data=st.binary(max_size=2048), ext=st.sampled_from([".jpg", ".png", ".tif", ".bin"]))
def test_random_bytes(scratch: Path, data: bytes, ext: str) -> None:
    check_decodes_or_refuses(scratch / f"random{ext}", data)


@settings(FUZZ, max_examples=1200)
@given(case=header_then_noise())
def test_real_header_then_noise(scratch: Path, case: tuple[str, bytes]) -> None:
    name, data = case
    check_decodes_or_refuses(scratch / f"noise-{name}", data)


@settings(FUZZ, max_examples=3000)
@given(case=mutated())
def test_mutated_valid_files(scratch: Path, case: tuple[str, bytes]) -> None:
    name, data = case
    check_decodes_or_refuses(scratch / f"mutated-{name}", data)
