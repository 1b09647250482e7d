"""Procedural synthetic May-Grünwald-Giemsa bone-marrow single-cell images, one per class code.

The default data for a machine with no real images. Each image is built in optical density
(Beer-Lambert): every stained structure adds ``density * absorbance`` and a pixel is
``illuminant * exp(-OD)``, so overlapping structures darken and mix as in a transmitted-light
smear. Shapes are signed-distance fields over a coordinate grid (numpy, vectorised, evaluated
only inside each shape's bounding box); granules, rods and hairs are scattered or drawn with
Pillow and blurred. Class conditioning follows the morphology of the 21 codes of Matek et al.
2021 (nucleus size and shape, chromatin, cytoplasm amount and colour, granules, special cases)
with overlapping parameter ranges between neighbouring classes; per-image nuisances (size,
position, rotation, red cells, neighbours, stain, focus, noise) are drawn independently of class.

Determinism: the image for ``(seed, code, i)`` comes from a Generator seeded with
``SeedSequence([seed, CLASS_CODES.index(code), i])``, so it does not depend on which other
classes or counts are requested; the same seed gives byte-identical files with the same numpy,
Pillow and CPU (float rounding in ``exp`` may differ between library builds).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from siamese_marrow.data.classes import CLASS_CODES, MATEK_CLASSES
from siamese_marrow.errors import ConfigError, DataError

__all__ = ["GENERATOR_VERSION", "render_cell", "profile_counts", "write_dataset"]

#: Bumped whenever the images for a given seed change.
GENERATOR_VERSION = "1.0"

#: Absorbance (optical density per unit stain) in R, G, B of each stained material.
_OD = {
    k: np.asarray(v, np.float32)
    for k, v in {
        "nucleus": (1.30, 1.85, 0.55),  # azure-eosin purple
        "blue": (1.00, 0.72, 0.20),  # basophilic cytoplasm (ribosomes)
        "pink": (0.14, 0.36, 0.18),  # acidophilic cytoplasm
        "grey": (0.42, 0.38, 0.26),  # monocyte grey-blue
        "rbc": (0.13, 0.27, 0.20),  # erythrocyte
        "eos": (0.08, 0.85, 1.10),  # eosinophil granules, orange-red
        "bas": (1.40, 2.10, 0.85),  # basophil granules, purple-black
        "azur": (0.70, 1.55, 0.50),  # azurophilic granules, red-purple
        "fine": (0.28, 0.62, 0.26),  # neutrophilic granules, lilac
        "auer": (0.90, 1.85, 0.75),  # Auer rods
        "lilac": (0.07, 0.15, 0.05),  # plasma background
        "greygreen": (0.34, 0.28, 0.40),  # thick-area background
    }.items()
}


@dataclass(frozen=True)
class _Spec:
    """Parameter ranges of one cell type; lengths are in units of the image half-width."""

    radius: tuple[float, float]  # cell radius
    nc: tuple[float, float]  # nucleus radius / cell radius
    shape: str = "round"  # round | kidney | band | seg | bilobed | irregular
    aspect: tuple[float, float] = (0.8, 1.0)  # nucleus minor/major axis
    ecc: tuple[float, float] = (0.0, 0.15)  # nucleus offset / cell radius
    chrom: tuple[float, float] = (0.3, 0.6)  # 0 fine/open .. 1 coarse/clumped
    nucleoli: tuple[int, int] = (0, 0)  # inclusive range
    nuc_dens: tuple[float, float] = (0.7, 1.0)
    baso: tuple[float, float] = (0.3, 0.6)  # cytoplasm 0 pink .. 1 deep blue
    cyto_dens: tuple[float, float] = (0.3, 0.6)
    grey: float = 0.0  # share of monocyte grey in the cytoplasm colour
    indent: tuple[float, float] = (0.0, 0.0)  # kidney indentation depth
    lobes: tuple[int, int] = (2, 2)  # inclusive range, for seg / bilobed
    granule: str = "none"  # none | fine | azur | eos | bas
    n_gran: tuple[int, int] = (0, 0)
    vacuoles: tuple[int, int] = (0, 0)
    warp: tuple[float, float] = (0.0, 0.04)  # outline irregularity
    halo: bool = False  # perinuclear Golgi halo
    hairy: bool = False
    auer: bool = False
    bas_share: tuple[float, float] = (0.0, 0.0)  # share of basophilic granules (ABE)


_NEUT = dict(baso=(0.0, 0.25), cyto_dens=(0.3, 0.5), granule="fine", n_gran=(300, 900))
# fmt: off
_SPECS: dict[str, _Spec] = {
    "BLA": _Spec((0.42, 0.66), (0.72, 0.9), chrom=(0.0, 0.35), nucleoli=(1, 3),
                 nuc_dens=(0.55, 0.85), baso=(0.5, 0.9), cyto_dens=(0.35, 0.65),
                 granule="azur", n_gran=(0, 8)),
    "LYI": _Spec((0.34, 0.5), (0.76, 0.92), chrom=(0.15, 0.5), nucleoli=(0, 2),
                 nuc_dens=(0.65, 0.95), baso=(0.5, 0.9), cyto_dens=(0.3, 0.6)),
    "LYT": _Spec((0.26, 0.42), (0.78, 0.94), chrom=(0.55, 1.0), nuc_dens=(0.85, 1.25),
                 baso=(0.35, 0.7), cyto_dens=(0.2, 0.45), indent=(0.0, 0.15)),
    "PEB": _Spec((0.48, 0.72), (0.64, 0.84), chrom=(0.05, 0.4), nucleoli=(1, 3),
                 nuc_dens=(0.65, 0.95), baso=(0.8, 1.0), cyto_dens=(0.65, 1.05)),
    "EBO": _Spec((0.24, 0.44), (0.55, 0.8), chrom=(0.6, 1.0), nuc_dens=(1.0, 1.45),
                 baso=(0.0, 0.75), cyto_dens=(0.3, 0.75)),
    "PLM": _Spec((0.36, 0.55), (0.45, 0.62), ecc=(0.28, 0.5), chrom=(0.6, 1.0),
                 nuc_dens=(0.85, 1.2), baso=(0.8, 1.0), cyto_dens=(0.65, 1.1), halo=True),
    "PMO": _Spec((0.52, 0.8), (0.52, 0.72), ecc=(0.12, 0.35), chrom=(0.15, 0.5),
                 nucleoli=(0, 2), nuc_dens=(0.6, 0.9), baso=(0.4, 0.8), cyto_dens=(0.35, 0.6),
                 granule="azur", n_gran=(90, 350)),
    "MYB": _Spec((0.44, 0.62), (0.5, 0.68), ecc=(0.1, 0.3), chrom=(0.35, 0.7),
                 indent=(0.0, 0.22), nuc_dens=(0.7, 1.0), **{**_NEUT, "baso": (0.15, 0.45)}),
    "MMZ": _Spec((0.42, 0.58), (0.5, 0.66), shape="kidney", ecc=(0.05, 0.25),
                 chrom=(0.5, 0.8), indent=(0.15, 0.5), nuc_dens=(0.75, 1.05), **_NEUT),
    "NGB": _Spec((0.42, 0.56), (0.55, 0.72), shape="band", chrom=(0.6, 0.9),
                 nuc_dens=(0.8, 1.1), **_NEUT),
    "NGS": _Spec((0.42, 0.56), (0.55, 0.72), shape="seg", lobes=(2, 5), chrom=(0.65, 0.95),
                 nuc_dens=(0.85, 1.15), **_NEUT),
    "EOS": _Spec((0.44, 0.6), (0.55, 0.7), shape="bilobed", lobes=(2, 3), chrom=(0.55, 0.85),
                 nuc_dens=(0.75, 1.05), baso=(0.0, 0.3), cyto_dens=(0.15, 0.35),
                 granule="eos", n_gran=(140, 320)),
    "ABE": _Spec((0.44, 0.62), (0.55, 0.72), shape="bilobed", lobes=(1, 2), chrom=(0.45, 0.8),
                 nuc_dens=(0.75, 1.05), baso=(0.0, 0.4), cyto_dens=(0.15, 0.35),
                 granule="eos", n_gran=(120, 300), bas_share=(0.1, 0.4)),
    "BAS": _Spec((0.36, 0.52), (0.55, 0.72), shape="irregular", indent=(0.1, 0.4),
                 chrom=(0.3, 0.6), nuc_dens=(0.55, 0.85), baso=(0.0, 0.3),
                 cyto_dens=(0.2, 0.4), granule="bas", n_gran=(30, 120)),
    "MON": _Spec((0.52, 0.74), (0.5, 0.7), shape="irregular", indent=(0.15, 0.5),
                 chrom=(0.25, 0.55), nuc_dens=(0.6, 0.85), baso=(0.3, 0.6), grey=0.75,
                 cyto_dens=(0.35, 0.6), granule="azur", n_gran=(0, 25), vacuoles=(0, 8),
                 warp=(0.04, 0.12)),
    "HAC": _Spec((0.42, 0.62), (0.45, 0.65), shape="kidney", indent=(0.0, 0.3),
                 chrom=(0.3, 0.6), nuc_dens=(0.65, 0.9), baso=(0.3, 0.6), grey=0.5,
                 cyto_dens=(0.25, 0.45), warp=(0.05, 0.12), hairy=True),
    "FGC": _Spec((0.48, 0.7), (0.62, 0.82), chrom=(0.05, 0.4), nucleoli=(0, 2),
                 nuc_dens=(0.55, 0.85), baso=(0.45, 0.85), cyto_dens=(0.35, 0.6),
                 granule="azur", n_gran=(5, 60), auer=True),
}
# fmt: on
_NEIGHBOURS = ("NGS", "LYT", "EBO", "BLA", "PMO", "MYB", "NGB", "MON", "EOS", "PLM")


def _u(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(lohi[0], lohi[1]))


def _i(rng: np.random.Generator, lohi: tuple[int, int]) -> int:
    return int(rng.integers(lohi[0], lohi[1] + 1))


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


def _draw_cell(cv: _Canvas, sp: _Spec, rng: np.random.Generator, cx: float, cy: float) -> None:
    """Draw one cell of type ``sp`` centred at ``(cx, cy)``."""
    big_r = _u(rng, sp.radius) * 1.12
    sl = cv.box(cx, cy, big_r * 1.45)
    if sl is None:
        return
    rot = rng.uniform(0, 2 * math.pi)
    u, v = cv.local(sl, cx, cy, rot)
    aspect = rng.uniform(0.82, 1.0)
    sdf_c = np.sqrt(u * u + (v * (1 / aspect)) ** 2) - big_r
    sdf_c += (_u(rng, sp.warp) * big_r) * cv.low[sl]
    for _ in range(int(rng.integers(0, 3)) if sp.baso[1] > 0.75 else 0):  # cytoplasmic blebs
        t = rng.uniform(0, 2 * math.pi)
        sdf_c = np.minimum(
            sdf_c,
            _circle(u, v, big_r * math.cos(t), big_r * math.sin(t), big_r * rng.uniform(0.1, 0.22)),
        )
    cyto = cv.soft(sdf_c)

    rn = big_r * _u(rng, sp.nc)
    e, t = _u(rng, sp.ecc) * big_r, rng.uniform(0, 2 * math.pi)
    ncx, ncy = e * math.cos(t), e * math.sin(t)  # in the cell frame
    nrot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(nrot), math.sin(nrot)
    un, vn = (u - ncx) * c + (v - ncy) * s, (v - ncy) * c - (u - ncx) * s
    sdf_n = _nucleus_sdf(sp, rng, un, vn, rn) + (rng.uniform(0.0, 0.06) * rn) * cv.low.T[sl]
    nuc = np.minimum(cv.soft(sdf_n), cyto)

    # cytoplasm
    col = _OD["pink"] + (_OD["blue"] - _OD["pink"]) * _u(rng, sp.baso)
    col = col + (_OD["grey"] - col) * sp.grey
    cd = cyto * (1 - 0.75 * nuc) * (_u(rng, sp.cyto_dens) * (1 + 0.12 * cv.mid[sl]))
    if sp.halo:
        hx, hy = -ncx / max(e, 1e-6) * rn, -ncy / max(e, 1e-6) * rn
        halo = cv.soft(
            _circle(u, v, ncx + hx * 0.95, ncy + hy * 0.95, rn * rng.uniform(0.4, 0.6)), 4.0
        )
        cd *= 1 - rng.uniform(0.5, 0.85) * halo
    vac = None
    for _ in range(_i(rng, sp.vacuoles)):
        r, t = big_r * 0.8 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        one = cv.soft(
            _circle(u, v, r * math.cos(t), r * math.sin(t), big_r * rng.uniform(0.04, 0.1))
        )
        vac = one if vac is None else np.maximum(vac, one)
    if vac is not None:
        cd *= 1 - 0.85 * vac
    cv.add(sl, cd, col)

    # nucleus: chromatin texture and nucleoli
    ch = _u(rng, sp.chrom)
    clumps = np.clip(0.5 + 0.7 * cv.mid[sl], 0.0, 1.0)
    tex = (1 - ch) * (1 + 0.18 * cv.hi[sl]) + ch * (0.45 + 1.1 * clumps + 0.15 * cv.hi[sl])
    nd = nuc * tex * _u(rng, sp.nuc_dens)
    for _ in range(_i(rng, sp.nucleoli)):
        r, t = rn * 0.45 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        nd *= 1 - 0.6 * cv.soft(
            _circle(un, vn, r * math.cos(t), r * math.sin(t), rn * rng.uniform(0.09, 0.18)), 2.5
        )
    if vac is not None:
        nd *= 1 - 0.4 * vac
    cv.add(sl, nd, "nucleus")

    # granules, rods and hairs, in image coordinates
    n = _i(rng, sp.n_gran)
    if sp.granule != "none" and n:
        rr = big_r * 0.95 * np.sqrt(rng.random(n))
        tt = rng.uniform(0, 2 * math.pi, n)
        gx, gy = cx + rr * np.cos(tt), cy + rr * np.sin(tt)
        full = np.zeros((cv.size, cv.size), np.float32)
        full[sl] = cyto
        kind = sp.granule
        sigma, amp, cover = {
            "fine": (0.5, 0.22, 1.0),
            "azur": (0.8, 0.75, 1.0),
            "eos": (1.05, 0.8, 0.55),
            "bas": (1.4, 1.1, 1.0),
        }[kind]
        bas_share = _u(rng, sp.bas_share)
        if bas_share > 0:
            k = int(n * bas_share)
            cv.add(None, cv.scatter(gx[:k], gy[:k], 1.3, 1.0) * full, "bas")
            gx, gy = gx[k:], gy[k:]
        dots = cv.scatter(gx, gy, sigma, amp * rng.uniform(0.7, 1.3))
        if cover < 1:
            full[sl] *= 1 - (1 - cover) * nuc
        cv.add(None, dots * full, kind)
    if sp.auer:
        segs = []
        for _ in range(int(rng.integers(1, 4))):
            r, t = big_r * 0.6 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            bx, by, ang = cx + r * math.cos(t), cy + r * math.sin(t), rng.uniform(0, math.pi)
            for _ in range(int(rng.integers(2, 8))):
                ln, a = big_r * rng.uniform(0.15, 0.4), ang + rng.normal(0, 0.12)
                ox, oy = (float(w) for w in rng.normal(0, 0.09 * big_r, 2))
                x0, y0 = bx + ox - 0.5 * ln * math.cos(a), by + oy - 0.5 * ln * math.sin(a)
                segs.append((x0, y0, x0 + ln * math.cos(a), y0 + ln * math.sin(a)))
        cv.add(None, cv.lines(segs, 1.2) * rng.uniform(0.7, 1.2), "auer")
    if sp.hairy:
        segs = []
        for _ in range(int(rng.integers(14, 40))):
            t = rng.uniform(0, 2 * math.pi)
            r0, r1 = big_r * 0.92, big_r * rng.uniform(1.05, 1.4)
            t1 = t + rng.normal(0, 0.1)
            segs.append(
                (
                    cx + r0 * math.cos(t),
                    cy + r0 * math.sin(t),
                    cx + r1 * math.cos(t1),
                    cy + r1 * math.sin(t1),
                )
            )
        cv.add(None, cv.lines(segs, 1.6, 0.7) * (0.6 * _u(rng, sp.cyto_dens) + 0.15), col)


def _draw_smudge(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> None:
    """KSC: a ruptured, smeared nucleus with streaky chromatin and no cytoplasm border."""
    r = rng.uniform(0.32, 0.62)
    sl = cv.box(cx, cy, r * 1.7)
    ang = rng.uniform(0, math.pi)
    u, v = cv.local(sl, cx, cy, ang)
    sdf = _ellipse(u, v, r, r * rng.uniform(0.5, 0.95)) + (rng.uniform(0.1, 0.3) * r) * cv.low[sl]
    # strands along the smear (the major axis): fast variation across it, slow along it
    streak = cv.field(rng, 0, (int(rng.integers(16, 36)), 2))
    streak = np.asarray(Image.fromarray(streak).rotate(-math.degrees(ang), Image.BILINEAR))
    dens = cv.soft(sdf, rng.uniform(4, 10)) * rng.uniform(0.35, 0.75)
    cv.add(sl, dens * np.clip(0.75 + 0.35 * streak[sl] + 0.2 * cv.hi[sl], 0.1, 2.0), "nucleus")
    segs = []
    for _ in range(int(rng.integers(0, 12))):
        t, ln = rng.uniform(0, 2 * math.pi), r * rng.uniform(0.6, 1.5)
        segs.append((cx, cy, cx + ln * math.cos(t), cy + ln * math.sin(t)))
    if segs:
        cv.add(None, cv.lines(segs, 1.5, 1.0) * rng.uniform(0.15, 0.4), "nucleus")


def _draw_artefact(cv: _Canvas, rng: np.random.Generator) -> None:
    """ART: debris, irregular fragments, platelets and stain precipitate; no proper cell."""
    mats = ("nucleus", "pink", "blue", "azur", "grey", "eos")
    for _ in range(int(rng.integers(1, 6))):
        fx, fy, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.05, 0.32)
        sl = cv.box(fx, fy, r * 1.6)
        if sl is None:
            continue
        u, v = cv.local(sl, fx, fy, rng.uniform(0, math.pi))
        sdf = (
            _ellipse(u, v, r, r * rng.uniform(0.25, 1.0))
            + (rng.uniform(0.1, 0.45) * r) * cv.mid[sl]
        )
        dens = cv.soft(sdf) * (rng.uniform(0.15, 1.0) * (1 + 0.3 * cv.hi[sl]))
        cv.add(sl, dens, mats[int(rng.integers(len(mats)))])
    n = int(rng.integers(0, 4)) * int(rng.integers(3, 12))  # platelet clumps
    if n:
        px, py = rng.uniform(-0.7, 0.7, 3), rng.uniform(-0.7, 0.7, 3)
        k = rng.integers(0, 3, n)
        xs, ys = px[k] + rng.normal(0, 0.06, n), py[k] + rng.normal(0, 0.06, n)
        cv.add(None, cv.scatter(xs, ys, 1.6, rng.uniform(0.4, 0.9)), "azur")
    n = int(rng.integers(0, 2)) * int(rng.integers(20, 250))  # stain precipitate
    if n:
        xs, ys = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        cv.add(None, cv.scatter(xs, ys, 0.7, rng.uniform(0.5, 1.2)), "bas")


def _draw_other(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> None:
    """OTH: a random mix: chimeric cells, macrophages with inclusions, mitoses."""
    kind = rng.random()
    if kind < 0.45:  # chimera: each parameter range taken from one of two cell types
        a, b = (_SPECS[k] for k in rng.choice(sorted(_SPECS), 2, replace=False))
        sp = _Spec(
            **{f.name: getattr(a if rng.random() < 0.5 else b, f.name) for f in fields(_Spec)}
        )
        _draw_cell(cv, sp, rng, cx, cy)
    elif kind < 0.75:  # macrophage: large, grey, vacuolated, with phagocytosed debris
        sp = _Spec(
            (0.72, 0.95),
            (0.25, 0.4),
            ecc=(0.3, 0.55),
            chrom=(0.3, 0.6),
            baso=(0.3, 0.6),
            grey=0.8,
            cyto_dens=(0.25, 0.5),
            granule="bas",
            n_gran=(5, 60),
            vacuoles=(4, 14),
            warp=(0.05, 0.15),
        )
        _draw_cell(cv, sp, rng, cx, cy)
    else:  # mitosis: chromosomes in a plate or ring, no nuclear membrane
        sp = _Spec(
            (0.45, 0.66), (0.1, 0.15), baso=(0.3, 0.8), cyto_dens=(0.3, 0.55), nuc_dens=(0.0, 0.1)
        )
        _draw_cell(cv, sp, rng, cx, cy)
        segs, ring = [], rng.random() < 0.5
        for _ in range(int(rng.integers(12, 30))):
            t = rng.uniform(0, 2 * math.pi)
            r = 0.18 * rng.uniform(0.6, 1.2) if ring else 0.0
            x0 = cx + r * math.cos(t) + (0 if ring else rng.normal(0, 0.04))
            y0 = cy + r * math.sin(t) + (0 if ring else rng.normal(0, 0.2))
            ln, a = rng.uniform(0.04, 0.1), rng.uniform(0, 2 * math.pi)
            segs.append((x0, y0, x0 + ln * math.cos(a), y0 + ln * math.sin(a)))
        cv.add(None, cv.lines(segs, 2.5, 0.6) * rng.uniform(1.0, 1.6), "nucleus")


def _draw_background(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float) -> None:
    """Plasma background, 0-4 red cells and sometimes partial neighbouring cells at the border."""
    tint = _OD["lilac"] + (_OD["greygreen"] - _OD["lilac"]) * rng.beta(0.8, 2.0)
    cv.add(None, (rng.uniform(0.3, 1.2) + 0.15 * cv.low) * 1.0, tint)
    for _ in range(int(rng.integers(0, 5))):
        rr = rng.uniform(0.2, 0.34)
        for _ in range(4):  # prefer red cells beside the main cell, not under it
            x, y = (float(w) for w in rng.uniform(-1.15, 1.15, 2))
            if math.hypot(x - cx, y - cy) > 0.55:
                break
        sl = cv.box(x, y, rr * 1.2)
        if sl is None:
            continue
        u, v = cv.local(sl, x, y, rng.uniform(0, math.pi))
        d2 = u * u + (v * (1 / rng.uniform(0.85, 1.0))) ** 2
        body = cv.soft(np.sqrt(d2) - rr, 2.0)
        pallor = np.clip(1 - d2 * (1 / (0.55 * rr) ** 2), 0, 1) * rng.uniform(0.25, 0.7)
        cv.add(sl, body * (1 - pallor) * rng.uniform(0.5, 1.1), "rbc")
    for _ in range(int(rng.choice(3, p=(0.45, 0.4, 0.15)))):
        t, dist = rng.uniform(0, 2 * math.pi), rng.uniform(1.05, 1.45)
        sp = _SPECS[_NEIGHBOURS[int(rng.integers(len(_NEIGHBOURS)))]]
        _draw_cell(cv, sp, rng, dist * math.cos(t), dist * math.sin(t))


def _check_codes(codes: Sequence[str]) -> None:
    bad = [c for c in codes if c not in MATEK_CLASSES]
    if bad:
        raise DataError(
            f"unknown class code(s) {', '.join(map(repr, bad))}; "
            f"valid codes are {', '.join(CLASS_CODES)}"
        )


def render_cell(code: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Render one synthetic single-cell image of class ``code``.

    Args:
        code: one of ``CLASS_CODES`` (e.g. ``"NGS"``); an unknown code raises ``ValueError``.
        rng: the only source of randomness; the same generator state gives the same image.
        size: side length in pixels; shapes scale with it (rendered at this size directly).

    Returns:
        An RGB ``PIL.Image`` of ``size x size`` pixels.
    """
    _check_codes([code])
    if size < 16:
        raise DataError(f"size {size} is too small; use at least 16 pixels")
    cv = _Canvas(size, rng)
    cx, cy = (float(w) for w in np.clip(rng.normal(0, 0.07, 2), -0.2, 0.2))
    _draw_background(cv, rng, cx, cy)
    if code == "ART":
        _draw_artefact(cv, rng)
    elif code == "KSC":
        _draw_smudge(cv, rng, cx, cy)
    elif code == "OTH":
        _draw_other(cv, rng, cx, cy)
    elif code == "NIF":
        if rng.random() < 0.4:  # pyknotic: a small, dense, dark nucleus
            sp = _Spec(
                (0.2, 0.34),
                (0.75, 0.95),
                chrom=(0.0, 0.3),
                nuc_dens=(1.3, 1.9),
                baso=(0.2, 0.8),
                cyto_dens=(0.1, 0.4),
                warp=(0.05, 0.2),
            )
        else:  # a degraded cell of any lineage
            base = _SPECS[sorted(_SPECS)[int(rng.integers(len(_SPECS)))]]
            sp = _Spec(
                **{
                    **{f.name: getattr(base, f.name) for f in fields(_Spec)},
                    "warp": (0.1, 0.3),
                    "nuc_dens": (0.5, 1.0),
                    "cyto_dens": (0.15, 0.4),
                }
            )
        _draw_cell(cv, sp, rng, cx, cy)
        cv.blur = rng.uniform(1.2, 3.5)
    else:
        _draw_cell(cv, _SPECS[code], rng, cx, cy)

    # stain, illumination, focus and sensor nuisances
    od = cv.od * (rng.uniform(0.88, 1.12, 3) * rng.uniform(0.85, 1.3)).astype(np.float32)
    illum = (
        np.asarray((0.97, 0.95, 0.98)) * rng.uniform(0.9, 1.04) + rng.normal(0, 0.015, 3)
    ).astype(np.float32)
    rgb = np.exp(-od) * (illum * 255.0)
    h, sat, gain = rng.normal(0, 0.1), rng.uniform(0.8, 1.25), rng.uniform(0.93, 1.05)
    k = np.full((3, 3), 1 / 3.0)
    axis = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = math.cos(h) * np.eye(3) + math.sin(h) * cross + (1 - math.cos(h)) * k
    mat = (gain * (k + sat * (rot - k))).astype(np.float32)
    rgb = rgb @ mat.T
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    radius = (max(0.0, rng.normal(0.45, 0.4)) + cv.blur) * size / 128
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    sigma = rng.uniform(0.0, 4.0)
    if sigma > 0.8:
        bank, n = _noise_bank(), size * size * 3
        start = int(rng.integers(0, bank.size - n)) if n < bank.size else 0
        noise = np.resize(bank[start : start + n], (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + sigma * noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:  # an extra, harsher JPEG generation
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(35, 80)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def profile_counts(
    profile: str,
    total: int | None = None,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    min_per_class: int = 2,
) -> dict[str, int]:
    """Images per class for a synthetic dataset.

    Args:
        profile: ``"uniform"``: ``per_class`` images each (or ``total`` split evenly);
            ``"matek"``: proportional to the real counts in ``MATEK_CLASSES``, scaled so that
            the counts sum to ``total`` or, without ``total``, so that the largest class gets
            ``per_class`` (default 200); every class gets at least ``min_per_class``.
        total: the exact sum of the counts; give ``total`` or ``per_class``, not both.
        per_class: images per class (uniform) or of the largest class (matek).
        classes: the class codes to include (default all of ``CLASS_CODES``), in that order.
        min_per_class: floor for every class in the matek profile.

    Returns:
        ``{code: count}`` in the order of ``classes``.
    """
    codes = list(CLASS_CODES if classes is None else classes)
    _check_codes(codes)
    if not codes or len(set(codes)) != len(codes):
        raise ConfigError(f"classes must be non-empty and without repeats, got {codes}")
    if total is not None and per_class is not None:
        raise ConfigError(
            f"give total or per_class, not both (total={total}, per_class={per_class})"
        )
    for name, val in (("total", total), ("per_class", per_class), ("min_per_class", min_per_class)):
        if val is not None and val < 0:
            raise ConfigError(f"{name} must be >= 0, got {val}")
    if profile == "uniform":
        if total is None:
            return {c: 200 if per_class is None else per_class for c in codes}
        q, r = divmod(total, len(codes))
        return {c: q + (j < r) for j, c in enumerate(codes)}
    if profile != "matek":
        raise ConfigError(f"unknown profile {profile!r}; valid profiles are 'uniform', 'matek'")
    real = np.array([MATEK_CLASSES[c][1] for c in codes], np.float64)
    if total is None:
        top = 200 if per_class is None else per_class
        out = np.maximum(np.rint(real * (top / real.max())).astype(np.int64), min_per_class)
        return {c: int(n) for c, n in zip(codes, out, strict=True)}
    if total < min_per_class * len(codes):
        raise ConfigError(
            f"total {total} is below min_per_class {min_per_class} x "
            f"{len(codes)} classes = {min_per_class * len(codes)}"
        )
    floored = np.zeros(len(codes), bool)  # water-filling: classes held at the floor
    while True:
        left = total - min_per_class * floored.sum()
        quota = np.where(floored, min_per_class, real * left / real[~floored].sum())
        low = ~floored & (quota < min_per_class)
        if not low.any():
            break
        floored |= low
    base = np.floor(quota).astype(np.int64)
    extra = total - base.sum()  # largest remainder; ties go to the class with more real images
    order = np.lexsort((-real, -(quota - base)))
    base[order[:extra]] += 1
    return {c: int(n) for c, n in zip(codes, base, strict=True)}


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp)`` then rename onto ``path``, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dataset(
    out: str | os.PathLike,
    counts: Mapping[str, int],
    seed: int = 0,
    size: int = 128,
    quality: int = 90,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic ImageFolder dataset: ``out/<CODE>/<CODE>_00000.jpg`` ...

    Image ``i`` of class ``code`` depends only on ``(seed, code, i, size)``. Files are written
    to a temporary name and renamed into place; nothing in ``out`` is deleted except the files
    being overwritten. ``out/synth.json`` records the seed, size, quality, counts and
    ``GENERATOR_VERSION``. Classes with a count of 0 get no folder.

    Returns:
        ``{code: images written}``.
    """
    _check_codes(list(counts))
    bad = {c: n for c, n in counts.items() if int(n) != n or n < 0}
    if bad:
        raise ConfigError(f"counts must be non-negative integers, got {bad}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for code, n in counts.items():
        n, k = int(n), CLASS_CODES.index(code)
        written[code] = 0
        if n == 0:
            continue
        folder = root / code
        folder.mkdir(exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, k, i]))
            img = render_cell(code, rng, size)
            _atomic_write(
                folder / f"{code}_{i:05d}.jpg",
                lambda p, img=img: img.save(p, format="JPEG", quality=quality),
            )
            written[code] += 1
        if progress:
            print(f"synth: {code} {n} images", file=sys.stderr, flush=True)
    meta = {
        "generator": "siamese_marrow.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "quality": quality,
        "counts": written,
    }
    _atomic_write(
        root / "synth.json",
        lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
    )
    return written
