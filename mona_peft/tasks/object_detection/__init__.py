"""Object detection: DETR-family detectors (RT-DETR by default) around a pretrained Swin, COCO box AP.

- :mod:`.data`: local COCO folders, and the offline digit-instance scenes.
- :mod:`.model`: the detectors around a backbone checkpoint; :func:`load_detection_base` rebuilds one beside an adapter.
- :mod:`.task`: :class:`ObjectDetectionTask`, the task of ``scripts/train_object_detection.py``.
- :mod:`.coco`: COCO AP with pycocotools (also instance segmentation's).
- The card template: ``model_cards/object_detection.md``.

Example::

    from mona_peft.tasks.object_detection import main

    results = main(["--max_train_steps", "2", "--output_dir", "out", "--report_to", "none"])
"""

from __future__ import annotations

from typing import Any

from ...training import main as run_main
from ...training.task import declare_task
from .model import DETECTION_CONFIG_FILE, DETECTORS, DetectorSize, build_detector, load_detection_base
from .task import DetectionArguments, ObjectDetectionTask, detection_scores


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags of ``scripts/train_object_detection.py`` (``argv``, default ``sys.argv[1:]``) and run it."""
    return run_main(argv, task=ObjectDetectionTask)


declare_task(ObjectDetectionTask)

__all__ = [
    "DETECTION_CONFIG_FILE",
    "DETECTORS",
    "DetectionArguments",
    "DetectorSize",
    "ObjectDetectionTask",
    "build_detector",
    "detection_scores",
    "load_detection_base",
    "main",
]
