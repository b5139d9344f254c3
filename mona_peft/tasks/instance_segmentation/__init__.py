"""Instance segmentation: Mask2Former around a pretrained Swin; COCO mask and box AP.

The task of ``scripts/train_instance_segmentation.py``.

Its model (:mod:`.model`: :func:`load_instance_segmentation_base` rebuilds it beside an adapter), task (:mod:`.task`)
and card (``model_cards/instance_segmentation.md``); the data and metric are object detection's, with masks.
"""

from functools import partial

from ...training import main as run_task
from ...training.task import declare_task
from .model import (  # noqa: F401
    INSTANCE_SEGMENTATION_CONFIG_FILE,
    Mask2FormerSize,
    build_mask2former,
    load_instance_segmentation_base,
)
from .task import InstanceSegmentationArguments, InstanceSegmentationTask, instance_scores  # noqa: F401

#: ``main(argv=None)``: parse the script's flags (default ``sys.argv[1:]``) and run it; returns the final results.
main = partial(run_task, task=declare_task(InstanceSegmentationTask))
