"""Procedural synthetic bone-marrow single-cell images (see ``render`` for the model)."""

from .render import GENERATOR_VERSION, profile_counts, render_cell, write_dataset

__all__ = ["GENERATOR_VERSION", "render_cell", "profile_counts", "write_dataset"]
