"""Object detection: DETR-family detectors (RT-DETR by default) around a pretrained Swin; COCO box AP.

The task of ``scripts/train_object_detection.py``.

Its data (:mod:`.data`: COCO folders and the offline digit-instance scenes), model (:mod:`.model`:
:func:`load_detection_base` rebuilds it beside an adapter), task (:mod:`.task`), metric (:mod:`.coco`, instance
segmentation's too) and card (``model_cards/object_detection.md``).
"""

from functools import partial

from ...training import main as run_task
from ...training.task import declare_task
from .model import DETECTION_CONFIG_FILE, DETECTORS, DetectorSize, build_detector, load_detection_base  # noqa: F401
from .task import DetectionArguments, ObjectDetectionTask, detection_scores  # noqa: F401

#: ``main(argv=None)``: parse the script's flags (default ``sys.argv[1:]``) and run it; returns the final results.
main = partial(run_task, task=declare_task(ObjectDetectionTask))
