"""Figures, image galleries and the self-contained HTML report for judging a classifier on
imbalanced cell data."""

from .figures import (
    confusion_matrix_png,
    per_class_recall_png,
    read_metrics_jsonl,
    training_curves_png,
)
from .gallery import mistakes_gallery_png, neighbours_gallery_png
from .html import render_report, write_report

__all__ = [
    "confusion_matrix_png",
    "mistakes_gallery_png",
    "neighbours_gallery_png",
    "per_class_recall_png",
    "read_metrics_jsonl",
    "render_report",
    "training_curves_png",
    "write_report",
]
