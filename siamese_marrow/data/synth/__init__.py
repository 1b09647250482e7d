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

Parts:

- ``specs``: data tables: stain absorbances ``_OD`` and the per-class parameter ranges
  ``_Spec`` / ``_SPECS``.
- ``canvas``: the coordinate grid, the sensor-noise bank, the optical-density ``_Canvas`` and
  the signed-distance shapes (ellipse, circle, capsule, nucleus outlines).
- ``cell``: ``_draw_cell``, one cell of a ``_Spec`` (outline, nucleus, cytoplasm, chromatin,
  granules, Auer rods, hairs).
- ``render``: ``render_cell``: background, the subject of each class including the special
  classes, and the stain / optics / sensor nuisances; ``GENERATOR_VERSION``.
- ``profiles``: class-code checks and ``profile_counts`` (images per class).
- ``writer``: ``write_dataset``, the ImageFolder writer (atomic, fsynced files).
"""

from .profiles import profile_counts
from .render import GENERATOR_VERSION, render_cell
from .writer import write_dataset

__all__ = ["GENERATOR_VERSION", "render_cell", "profile_counts", "write_dataset"]
