"""Class specification tables: stain absorbances and the parameter ranges of each cell type.

Lengths are in units of the image half-width. ``_u`` and ``_i`` draw one value from a range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
