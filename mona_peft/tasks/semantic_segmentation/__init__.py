"""Semantic segmentation: UperNet around a pretrained backbone, mean IoU.

- :mod:`.data`: ``images/`` + ``masks/`` folders, Hub datasets, the offline digit scenes (and their compositor).
- :mod:`.model`: UperNet around a backbone checkpoint; :func:`load_segmentation_base` rebuilds it beside an adapter.
- :mod:`.task`: :class:`SemanticSegmentationTask`, the task of ``scripts/train_semantic_segmentation.py``.
- ``mean_iou/``: the ``evaluate`` metric module (``METRIC_PATH``).
- The card template: ``model_cards/semantic_segmentation.md``.

Example::

    from mona_peft.tasks.semantic_segmentation import main

    results = main(["--max_train_steps", "2", "--output_dir", "out", "--report_to", "none"])
"""

from __future__ import annotations

from typing import Any

from ...training import main as run_main
from ...training.task import declare_task
from .model import SEGMENTATION_CONFIG_FILE, build_upernet, load_segmentation_base
from .task import METRIC_PATH, SegmentationArguments, SemanticSegmentationTask, segmentation_scores


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags of ``scripts/train_semantic_segmentation.py`` (``argv``, default ``sys.argv[1:]``) and run it."""
    return run_main(argv, task=SemanticSegmentationTask)


declare_task(SemanticSegmentationTask)

__all__ = [
    "METRIC_PATH",
    "SEGMENTATION_CONFIG_FILE",
    "SegmentationArguments",
    "SemanticSegmentationTask",
    "build_upernet",
    "load_segmentation_base",
    "main",
    "segmentation_scores",
]
