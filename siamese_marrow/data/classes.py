"""The 21 bone-marrow cell classes of Matek et al. 2021 and their counts in the full dataset."""

from __future__ import annotations

#: code -> (cell type, number of images in the full 171,374-image release)
MATEK_CLASSES: dict[str, tuple[str, int]] = {
    "ABE": ("abnormal eosinophil", 8),
    "ART": ("artefact", 19_630),
    "BAS": ("basophil", 441),
    "BLA": ("blast", 11_973),
    "EBO": ("erythroblast", 27_395),
    "EOS": ("eosinophil", 5_883),
    "FGC": ("faggot cell", 47),
    "HAC": ("hairy cell", 409),
    "KSC": ("smudge cell", 42),
    "LYI": ("immature lymphocyte", 65),
    "LYT": ("lymphocyte", 26_242),
    "MMZ": ("metamyelocyte", 3_055),
    "MON": ("monocyte", 4_040),
    "MYB": ("myelocyte", 6_557),
    "NGB": ("band neutrophil", 9_968),
    "NGS": ("segmented neutrophil", 29_424),
    "NIF": ("not identifiable", 3_538),
    "OTH": ("other cell", 294),
    "PEB": ("proerythroblast", 2_740),
    "PLM": ("plasma cell", 7_629),
    "PMO": ("promyelocyte", 11_994),
}

#: The class codes in their stable (alphabetical) order.
CLASS_CODES: tuple[str, ...] = tuple(sorted(MATEK_CLASSES))

#: What ``classify`` calls an abstention; no class may be named so.
RESERVED_LABELS = ("uncertain",)

#: Longest class label accepted.
MAX_LABEL_LENGTH = 100


def label_problem(label: object) -> str | None:
    """Why ``label`` cannot name a class (None when it can): empty, surrounded by whitespace,
    holding a control character or a path separator, too long, or a reserved word."""
    if not isinstance(label, str) or not label:
        return "is empty"
    if label != label.strip():
        return "starts or ends with whitespace"
    if any(ord(ch) < 32 or ord(ch) == 127 or ch in "\u2028\u2029\x85" for ch in label):
        return "holds a control character (e.g. a newline or a tab)"
    if "/" in label or "\\" in label or label in (".", ".."):
        return "holds a path separator"
    if len(label) > MAX_LABEL_LENGTH:
        return f"is {len(label)} characters long (at most {MAX_LABEL_LENGTH})"
    if label.lower() in RESERVED_LABELS:
        return "is reserved: classify calls an abstention 'uncertain'"
    return None
