"""The whole picture: background, the subject of each class, then stain, optics and sensor.

``render_cell`` draws the background (plasma, red cells, neighbours), the subject (a cell of the
class's ``_Spec`` or a special case: artefact, smudge, other, not identifiable) and then turns
optical density into an RGB photograph with per-image stain, focus, noise and JPEG nuisances.
"""

from __future__ import annotations

import io
import math
from dataclasses import fields

import numpy as np
from PIL import Image, ImageFilter

from ...errors import DataError
from .canvas import _Canvas, _ellipse, _noise_bank
from .cell import _draw_cell
from .profiles import _check_codes
from .specs import _NEIGHBOURS, _OD, _SPECS, _Spec

#: Bumped whenever the images for a given seed change.
GENERATOR_VERSION = "1.0"


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
    _draw_subject(cv, code, rng, cx, cy)
    return _photograph(cv, rng, size)


def _draw_subject(cv: _Canvas, code: str, rng: np.random.Generator, cx: float, cy: float) -> None:
    """Draw what the image of class ``code`` shows, centred at ``(cx, cy)``."""
    if code == "ART":
        _draw_artefact(cv, rng)
    elif code == "KSC":
        _draw_smudge(cv, rng, cx, cy)
    elif code == "OTH":
        _draw_other(cv, rng, cx, cy)
    elif code == "NIF":
        _draw_cell(cv, _unidentifiable_spec(rng), rng, cx, cy)
        cv.blur = rng.uniform(1.2, 3.5)
    else:
        _draw_cell(cv, _SPECS[code], rng, cx, cy)


def _unidentifiable_spec(rng: np.random.Generator) -> _Spec:
    """NIF: a pyknotic cell or a degraded cell of any lineage."""
    if rng.random() < 0.4:  # pyknotic: a small, dense, dark nucleus
        return _Spec(
            (0.2, 0.34),
            (0.75, 0.95),
            chrom=(0.0, 0.3),
            nuc_dens=(1.3, 1.9),
            baso=(0.2, 0.8),
            cyto_dens=(0.1, 0.4),
            warp=(0.05, 0.2),
        )
    base = _SPECS[sorted(_SPECS)[int(rng.integers(len(_SPECS)))]]  # a degraded cell
    return _Spec(
        **{
            **{f.name: getattr(base, f.name) for f in fields(_Spec)},
            "warp": (0.1, 0.3),
            "nuc_dens": (0.5, 1.0),
            "cyto_dens": (0.15, 0.4),
        }
    )


def _photograph(cv: _Canvas, rng: np.random.Generator, size: int) -> Image.Image:
    """The RGB image of the canvas under stain, illumination, focus and sensor nuisances."""
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
    return _camera(img, rng, size, cv.blur)


def _camera(img: Image.Image, rng: np.random.Generator, size: int, blur: float) -> Image.Image:
    """Defocus (plus ``blur`` pixels at 128 px), sensor noise and sometimes a harsh JPEG pass."""
    radius = (max(0.0, rng.normal(0.45, 0.4)) + blur) * size / 128
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
