"""Kept for the cards on the Hub whose snippets import ``mona_peft.detection``: the tasks live in
:mod:`mona_peft.tasks.object_detection` and :mod:`mona_peft.tasks.instance_segmentation`."""

from .tasks.instance_segmentation.model import load_instance_segmentation_base
from .tasks.object_detection.model import load_detection_base

__all__ = ["load_detection_base", "load_instance_segmentation_base"]
