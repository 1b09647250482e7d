"""Drawing one cell of a given ``_Spec``: outline, nucleus, cytoplasm, chromatin and extras.

``_draw_cell`` runs the steps in a fixed order; each step draws from the same generator in the
same sequence as before, so a given generator state always gives the same cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .canvas import _Canvas, _circle, _nucleus_sdf
from .specs import _OD, _i, _Spec, _u


@dataclass(frozen=True)
class _Body:
    """The outline of a cell: its pixel window, frame coordinates and cytoplasm coverage."""

    sl: tuple[slice, slice]  # pixel window of the cell
    cx: float  # centre, image coordinates
    cy: float
    u: np.ndarray  # window coordinates in the (rotated) cell frame
    v: np.ndarray
    big_r: float  # cell radius
    cyto: np.ndarray  # cytoplasm coverage in the window


@dataclass(frozen=True)
class _Nucleus:
    """The nucleus of a cell: its placement in the cell frame and its coverage."""

    rn: float  # nominal radius
    e: float  # offset from the cell centre
    ncx: float  # centre in the cell frame
    ncy: float
    un: np.ndarray  # window coordinates in the nucleus frame
    vn: np.ndarray
    nuc: np.ndarray  # nucleus coverage in the window (within the cytoplasm)


def _draw_cell(cv: _Canvas, sp: _Spec, rng: np.random.Generator, cx: float, cy: float) -> None:
    """Draw one cell of type ``sp`` centred at ``(cx, cy)``."""
    body = _cell_body(cv, sp, rng, cx, cy)
    if body is None:
        return
    nucleus = _place_nucleus(cv, sp, rng, body)
    col, vac = _paint_cytoplasm(cv, sp, rng, body, nucleus)
    _paint_chromatin(cv, sp, rng, body, nucleus, vac)
    _draw_granules(cv, sp, rng, body, nucleus)
    if sp.auer:
        _draw_auer_rods(cv, rng, body)
    if sp.hairy:
        _draw_hairs(cv, sp, rng, body, col)


def _cell_body(
    cv: _Canvas, sp: _Spec, rng: np.random.Generator, cx: float, cy: float
) -> _Body | None:
    """The cell outline with its blebs; None when the cell lies off the image."""
    big_r = _u(rng, sp.radius) * 1.12
    sl = cv.box(cx, cy, big_r * 1.45)
    if sl is None:
        return None
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
    return _Body(sl, cx, cy, u, v, big_r, cyto)


def _place_nucleus(cv: _Canvas, sp: _Spec, rng: np.random.Generator, body: _Body) -> _Nucleus:
    """Size, offset, rotation and outline of the nucleus."""
    sl, u, v, big_r = body.sl, body.u, body.v, body.big_r
    rn = big_r * _u(rng, sp.nc)
    e, t = _u(rng, sp.ecc) * big_r, rng.uniform(0, 2 * math.pi)
    ncx, ncy = e * math.cos(t), e * math.sin(t)  # in the cell frame
    nrot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(nrot), math.sin(nrot)
    un, vn = (u - ncx) * c + (v - ncy) * s, (v - ncy) * c - (u - ncx) * s
    sdf_n = _nucleus_sdf(sp, rng, un, vn, rn) + (rng.uniform(0.0, 0.06) * rn) * cv.low.T[sl]
    nuc = np.minimum(cv.soft(sdf_n), body.cyto)
    return _Nucleus(rn, e, ncx, ncy, un, vn, nuc)


def _paint_cytoplasm(
    cv: _Canvas, sp: _Spec, rng: np.random.Generator, body: _Body, nucleus: _Nucleus
) -> tuple[np.ndarray, np.ndarray | None]:
    """Add the cytoplasm (colour, Golgi halo, vacuoles); return its colour and the vacuoles."""
    sl, u, v = body.sl, body.u, body.v
    rn, e, ncx, ncy = nucleus.rn, nucleus.e, nucleus.ncx, nucleus.ncy
    col = _OD["pink"] + (_OD["blue"] - _OD["pink"]) * _u(rng, sp.baso)
    col = col + (_OD["grey"] - col) * sp.grey
    cd = body.cyto * (1 - 0.75 * nucleus.nuc) * (_u(rng, sp.cyto_dens) * (1 + 0.12 * cv.mid[sl]))
    if sp.halo:
        hx, hy = -ncx / max(e, 1e-6) * rn, -ncy / max(e, 1e-6) * rn
        halo = cv.soft(
            _circle(u, v, ncx + hx * 0.95, ncy + hy * 0.95, rn * rng.uniform(0.4, 0.6)), 4.0
        )
        cd *= 1 - rng.uniform(0.5, 0.85) * halo
    vac = _vacuoles(cv, sp, rng, body)
    if vac is not None:
        cd *= 1 - 0.85 * vac
    cv.add(sl, cd, col)
    return col, vac


def _vacuoles(cv: _Canvas, sp: _Spec, rng: np.random.Generator, body: _Body) -> np.ndarray | None:
    """Coverage of the cytoplasmic vacuoles in the cell window, or None when there are none."""
    u, v, big_r = body.u, body.v, body.big_r
    vac = None
    for _ in range(_i(rng, sp.vacuoles)):
        r, t = big_r * 0.8 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        one = cv.soft(
            _circle(u, v, r * math.cos(t), r * math.sin(t), big_r * rng.uniform(0.04, 0.1))
        )
        vac = one if vac is None else np.maximum(vac, one)
    return vac


def _paint_chromatin(
    cv: _Canvas,
    sp: _Spec,
    rng: np.random.Generator,
    body: _Body,
    nucleus: _Nucleus,
    vac: np.ndarray | None,
) -> None:
    """Add the nucleus: chromatin texture and nucleoli."""
    sl, nuc, rn, un, vn = body.sl, nucleus.nuc, nucleus.rn, nucleus.un, nucleus.vn
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


def _draw_granules(
    cv: _Canvas, sp: _Spec, rng: np.random.Generator, body: _Body, nucleus: _Nucleus
) -> None:
    """Scatter the cytoplasmic granules, in image coordinates (the count is always drawn)."""
    sl, cx, cy, big_r, nuc = body.sl, body.cx, body.cy, body.big_r, nucleus.nuc
    n = _i(rng, sp.n_gran)
    if sp.granule == "none" or not n:
        return
    rr = big_r * 0.95 * np.sqrt(rng.random(n))
    tt = rng.uniform(0, 2 * math.pi, n)
    gx, gy = cx + rr * np.cos(tt), cy + rr * np.sin(tt)
    full = np.zeros((cv.size, cv.size), np.float32)
    full[sl] = body.cyto
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


def _draw_auer_rods(cv: _Canvas, rng: np.random.Generator, body: _Body) -> None:
    """Bundles of Auer rods (faggot cells), in image coordinates."""
    cx, cy, big_r = body.cx, body.cy, body.big_r
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


def _draw_hairs(
    cv: _Canvas, sp: _Spec, rng: np.random.Generator, body: _Body, col: np.ndarray
) -> None:
    """Hair-like cytoplasmic projections (hairy cells) in the cytoplasm colour ``col``."""
    cx, cy, big_r = body.cx, body.cy, body.big_r
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
