"""Image classification: Hub datasets, image folders and the offline digits, top-1/top-5 accuracy.

- :mod:`.data`: Hub datasets and ``<dir>/<class>/<images>`` folders, the transform and collate.
- :mod:`.model`: none: the classifier is transformers' own, with a fresh head (in :mod:`.task`).
- :mod:`.task`: :class:`ImageClassificationTask`, the task of ``scripts/train_image_classification.py``.
- ``top_k_accuracy/``: the ``evaluate`` metric module (``METRIC_PATH``).
- The card template: ``model_cards/image_classification.md``.

Example::

    from mona_peft.tasks.image_classification import main

    results = main(["--max_train_steps", "2", "--output_dir", "out", "--report_to", "none"])
"""

from __future__ import annotations

from typing import Any

from ...training import main as run_main
from ...training.task import declare_task
from .task import METRIC_PATH, ImageClassificationTask, accuracy_scores


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags of ``scripts/train_image_classification.py`` (``argv``, default ``sys.argv[1:]``) and run it."""
    return run_main(argv, task=ImageClassificationTask)


declare_task(ImageClassificationTask)

__all__ = ["ImageClassificationTask", "METRIC_PATH", "accuracy_scores", "main"]
