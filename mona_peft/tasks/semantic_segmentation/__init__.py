"""Semantic segmentation: UperNet around a pretrained backbone; mean IoU.

The task of ``scripts/train_semantic_segmentation.py``.

Its data (:mod:`.data`: folders, Hub datasets, the offline digit scenes and their compositor), model (:mod:`.model`:
:func:`load_segmentation_base` rebuilds it beside an adapter), task (:mod:`.task`), metric (``mean_iou/``) and card
(``model_cards/semantic_segmentation.md``).
"""

from functools import partial

from ...training import main as run_task
from ...training.task import declare_task
from .model import SEGMENTATION_CONFIG_FILE, build_upernet, load_segmentation_base  # noqa: F401
from .task import METRIC_PATH, SegmentationArguments, SemanticSegmentationTask, segmentation_scores  # noqa: F401

#: ``main(argv=None)``: parse the script's flags (default ``sys.argv[1:]``) and run it; returns the final results.
main = partial(run_task, task=declare_task(SemanticSegmentationTask))
