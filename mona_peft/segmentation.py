"""Kept for the cards on the Hub whose snippets import ``mona_peft.segmentation``: the task lives in
:mod:`mona_peft.tasks.semantic_segmentation`."""

from .tasks.semantic_segmentation.model import load_segmentation_base

__all__ = ["load_segmentation_base"]
