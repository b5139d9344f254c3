"""Instance segmentation: Mask2Former around a pretrained Swin, COCO mask and box AP.

- data: none of its own: the COCO folders and scenes of :mod:`mona_peft.tasks.object_detection.data`, with masks.
- :mod:`.model`: Mask2Former around a backbone checkpoint; :func:`load_instance_segmentation_base` rebuilds it
  beside an adapter.
- :mod:`.task`: :class:`InstanceSegmentationTask`, the task of ``scripts/train_instance_segmentation.py``.
- The card template: ``model_cards/instance_segmentation.md``.

Example::

    from mona_peft.tasks.instance_segmentation import main

    results = main(["--max_train_steps", "2", "--output_dir", "out", "--report_to", "none"])
"""

from __future__ import annotations

from typing import Any

from ...training import main as run_main
from ...training.task import declare_task
from .model import (
    INSTANCE_SEGMENTATION_CONFIG_FILE,
    Mask2FormerSize,
    build_mask2former,
    load_instance_segmentation_base,
)
from .task import InstanceSegmentationArguments, InstanceSegmentationTask, instance_scores


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags of ``scripts/train_instance_segmentation.py`` (``argv``, default ``sys.argv[1:]``) and run it."""
    return run_main(argv, task=InstanceSegmentationTask)


declare_task(InstanceSegmentationTask)

__all__ = [
    "INSTANCE_SEGMENTATION_CONFIG_FILE",
    "InstanceSegmentationArguments",
    "InstanceSegmentationTask",
    "Mask2FormerSize",
    "build_mask2former",
    "instance_scores",
    "load_instance_segmentation_base",
    "main",
]
