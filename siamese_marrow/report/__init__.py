"""Figures, image galleries, the self-contained HTML report for judging a classifier on
imbalanced cell data, and the review page of classified cells."""

from .figures import (
    confusion_matrix_png,
    per_class_recall_png,
    read_metrics_jsonl,
    training_curves_png,
)
from .gallery import mistakes_gallery_png, neighbours_gallery_png
from .html import Published, render_report, write_report
from .reliability import reliability_png, risk_coverage_png
from .review import render_review, write_review
from .thumbs import mistakes_gallery_html

__all__ = [
    "Published",
    "confusion_matrix_png",
    "mistakes_gallery_html",
    "mistakes_gallery_png",
    "neighbours_gallery_png",
    "per_class_recall_png",
    "read_metrics_jsonl",
    "reliability_png",
    "render_report",
    "render_review",
    "risk_coverage_png",
    "training_curves_png",
    "write_report",
    "write_review",
]
