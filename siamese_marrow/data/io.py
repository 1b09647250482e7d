"""Decoding any image file into 3-channel RGB, with one clear error type for bad files."""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

#: File extensions treated as images when a folder is scanned.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"}
)

#: Largest accepted image, in pixels (Pillow's own bomb limit is 89 Mpx; a cell crop is ~0.1 Mpx).
MAX_PIXELS = 64_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode (L, LA, P, RGBA, I;16, I, F, CMYK, ...) to RGB.

    Transparent pixels are composited on white (the colour of an empty slide); 16-bit and 32-bit
    greyscale are scaled by their own range, not clipped.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
        scaled = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return img.convert("RGB")


#: EXIF tag of the orientation in which the camera held the picture.
EXIF_ORIENTATION = 0x0112


def not_regular(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a folder"``, ``"a FIFO"``,
    ``"a device"``, ``"a socket"``); None for a regular file or a missing path. Symlinks are
    followed. Reading a FIFO or ``/dev/zero`` as an image would block or never end."""
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def exif_upright(img: Image.Image) -> Image.Image:
    """``img`` turned the way its EXIF orientation tag says the camera was held (a phone photo
    of a slide); unchanged when it has no such tag or the EXIF block cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data"
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to refuse the pixels
        pass
    return img


def load_rgb(path: str | Path) -> Image.Image:
    """Open, fully decode and convert ``path`` to RGB, or raise :class:`ImageDecodeError`.

    The error names the file and the problem (empty file, not an image, truncated, too large,
    not a regular file). The EXIF orientation, if any, is applied.
    """
    path = Path(path)
    kind = not_regular(path)
    if kind is not None:
        raise ImageDecodeError(path, f"is not a regular file but {kind}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageDecodeError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise ImageDecodeError(path, "is an empty (0-byte) file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageDecodeError(
                        path,
                        f"is {w}x{h} = {w * h:,} pixels, above the limit of {MAX_PIXELS:,}; "
                        "crop single cells first",
                    )
                img.load()
                return to_rgb(exif_upright(img))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(path, f"looks like a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            path, "is not an image Pillow can read (wrong extension or unsupported format)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageDecodeError(path, f"is damaged or truncated ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise anything on hostile input
        raise ImageDecodeError(path, f"could not be decoded ({type(e).__name__}: {e})") from None
