"""The drawing surface: coordinate grid, sensor-noise bank, ``_Canvas`` and shape distances.

A ``_Canvas`` holds an optical-density image plus the smooth noise fields of one picture; the
signed-distance functions (negative inside) describe ellipses, circles, capsules and nuclei.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .specs import _OD, _i, _Spec, _u


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], each ``(size, size)`` float32, read-only."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    x, y = np.meshgrid(t, t)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of standard normals; per-image sensor noise is a seeded window of it."""
    return np.random.default_rng(20210101).standard_normal(1 << 18).astype(np.float32)


class _Canvas:
    """An optical-density image ``(size, size, 3)`` plus the noise fields of one picture."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.px = 2.0 / size
        self.x, self.y = _grid(size)
        self.od = np.zeros((size, size, 3), np.float32)
        self.low = self.field(rng, 5)  # outlines
        self.mid = self.field(rng, 20)  # chromatin clumps
        self.hi = self.field(rng, 48)  # fine texture
        self.blur = 0.0  # extra defocus requested by the drawing (pixels at 128 px)

    def field(
        self, rng: np.random.Generator, cells: int, shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Smooth noise with about unit spread: ``cells`` random values upsampled bicubically."""
        small = rng.standard_normal(shape or (cells, cells)).astype(np.float32)
        img = Image.fromarray(small).resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(img)

    def box(self, cx: float, cy: float, r: float) -> tuple[slice, slice] | None:
        """The pixel window covering the disc ``(cx, cy, r)``, or None if it is off the image."""
        s = self.size
        x0, x1 = max(0, int((cx - r + 1) / self.px)), min(s, int(math.ceil((cx + r + 1) / self.px)))
        y0, y1 = max(0, int((cy - r + 1) / self.px)), min(s, int(math.ceil((cy + r + 1) / self.px)))
        return (slice(y0, y1), slice(x0, x1)) if x0 < x1 and y0 < y1 else None

    def local(
        self, sl: tuple[slice, slice], cx: float, cy: float, ang: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of the window in a frame centred at ``(cx, cy)`` rotated by ``ang``."""
        dx, dy = self.x[sl] - cx, self.y[sl] - cy
        c, s = math.cos(ang), math.sin(ang)
        return dx * c + dy * s, dy * c - dx * s

    def soft(self, sdf: np.ndarray, width: float = 1.5) -> np.ndarray:
        """Coverage in [0, 1] of a signed-distance field, with an edge ``width`` pixels wide."""
        return np.clip(0.5 - sdf * (1.0 / (width * self.px)), 0.0, 1.0)

    def add(
        self, sl: tuple[slice, slice] | None, dens: np.ndarray, material: str | np.ndarray
    ) -> None:
        """Add ``dens * absorbance`` to the window ``sl`` (or the whole image when None)."""
        vec = _OD[material] if isinstance(material, str) else material
        if sl is None:
            self.od += dens[..., None] * vec
        else:
            self.od[sl] += dens[..., None] * vec

    def scatter(
        self, xs: np.ndarray, ys: np.ndarray, sigma_px: float, amp: float = 1.0
    ) -> np.ndarray:
        """Blurred dots at the given coordinates, peak about ``amp``: a ``(size, size)`` map."""
        s = self.size
        ix = np.floor((np.asarray(xs) + 1) / self.px).astype(np.int64)
        iy = np.floor((np.asarray(ys) + 1) / self.px).astype(np.int64)
        keep = (ix >= 0) & (ix < s) & (iy >= 0) & (iy < s)  # dots off the image are dropped
        acc = np.bincount(iy[keep] * s + ix[keep], minlength=s * s).reshape(s, s)
        sigma = max(0.35, sigma_px * s / 128)
        img = Image.fromarray(np.minimum(acc * 255, 255).astype(np.uint8), "L")
        img = img.filter(ImageFilter.GaussianBlur(sigma))
        return np.asarray(img, np.float32) * (amp * min(6.0, 2 * math.pi * sigma**2) / 255.0)

    def lines(
        self,
        segs: Sequence[tuple[float, float, float, float]],
        width_px: float,
        sigma_px: float = 0.6,
    ) -> np.ndarray:
        """Blurred line segments ``(x0, y0, x1, y1)``: a ``(size, size)`` map in [0, 1]."""
        s, k = self.size, self.size / 2.0
        img = Image.new("L", (s, s))
        draw = ImageDraw.Draw(img)
        w = max(1, round(width_px * s / 128))
        for x0, y0, x1, y1 in segs:
            draw.line(((x0 + 1) * k, (y0 + 1) * k, (x1 + 1) * k, (y1 + 1) * k), fill=255, width=w)
        img = img.filter(ImageFilter.GaussianBlur(max(0.3, sigma_px * s / 128)))
        return np.asarray(img, np.float32) * (1.0 / 255.0)


# --- signed distances (negative inside) -------------------------------------------------------
def _ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    return (np.sqrt((u * (1 / a)) ** 2 + (v * (1 / b)) ** 2) - 1.0) * min(a, b)


def _circle(u: np.ndarray, v: np.ndarray, x: float, y: float, r: float) -> np.ndarray:
    return np.sqrt((u - x) ** 2 + (v - y) ** 2) - r


def _capsule(
    u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float], r: float
) -> np.ndarray:
    bx, by = q[0] - p[0], q[1] - p[1]
    pu, pv = u - p[0], v - p[1]
    h = np.clip((pu * bx + pv * by) * (1.0 / max(bx * bx + by * by, 1e-9)), 0.0, 1.0)
    return np.sqrt((pu - bx * h) ** 2 + (pv - by * h) ** 2) - r


def _nucleus_sdf(
    sp: _Spec, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, rn: float
) -> np.ndarray:
    """Signed distance of the nucleus in its own frame; ``rn`` is its nominal radius."""
    shape = sp.shape
    if shape in ("seg", "bilobed"):
        n = _i(rng, sp.lobes)
        if n == 1:  # an unsegmented (immature or abnormal) nucleus
            shape = "kidney"
        else:
            rl = rn * (rng.uniform(0.5, 0.64) if shape == "bilobed" else rng.uniform(0.42, 0.56))
            rl *= 1.0 if n <= 2 else (2.0 / n) ** 0.35
            pts, ang, x, y = [(0.0, 0.0)], 0.0, 0.0, 0.0
            for _ in range(n - 1):
                ang += rng.uniform(0.35, 1.2) * (1 if rng.random() < 0.5 else -1)
                step = rl * rng.uniform(1.45, 2.2)
                x, y = x + step * math.cos(ang), y + step * math.sin(ang)
                pts.append((x, y))
            mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
            pts = [(p[0] - mx, p[1] - my) for p in pts]
            d = None
            for j, (px, py) in enumerate(pts):
                lobe = _ellipse(u - px, v - py, rl, rl * rng.uniform(0.75, 1.0))
                d = lobe if d is None else np.minimum(d, lobe)
                if j:
                    d = np.minimum(
                        d, _capsule(u, v, pts[j - 1], (px, py), rl * rng.uniform(0.1, 0.3))
                    )
            return d
    if shape == "band":
        rc, half = rn * rng.uniform(0.62, 0.8), rng.uniform(1.0, 2.4)
        w = rn * rng.uniform(0.24, 0.36)
        t = np.linspace(-half, half, 7)
        pts = [(rc * math.cos(a), rc * math.sin(a) * rng.uniform(0.85, 1.05)) for a in t]
        d = None
        for j in range(6):
            seg = _capsule(u, v, pts[j], pts[j + 1], w * rng.uniform(0.85, 1.1))
            d = seg if d is None else np.minimum(d, seg)
        return d
    a = rn
    b = rn * _u(rng, sp.aspect)
    d = _ellipse(u, v, a, b)
    depth = _u(rng, sp.indent) if shape in ("kidney", "irregular") else _u(rng, sp.indent) * 0.6
    if depth > 0.02:
        rc = a * rng.uniform(0.45, 0.8)
        cy = b + rc - 2.0 * depth * b
        d = np.maximum(d, -_circle(u, v, rng.uniform(-0.3, 0.3) * a, cy, rc))
    if shape == "irregular":  # a fold: a second shallow notch
        rc = a * rng.uniform(0.25, 0.45)
        d = np.maximum(d, -_circle(u, v, a + rc * rng.uniform(0.4, 0.9), 0.0, rc))
    return d
