"""Image classification: Hub datasets, image folders and the offline digits; top-1/top-5 accuracy.

The task of ``scripts/train_image_classification.py``.

Its data (:mod:`.data`), task (:mod:`.task`: transformers' classifier with a fresh head), metric
(``top_k_accuracy/``) and card (``model_cards/image_classification.md``).
"""

from functools import partial

from ...training import main as run_task
from ...training.task import declare_task
from .task import METRIC_PATH, ImageClassificationTask, accuracy_scores  # noqa: F401

#: ``main(argv=None)``: parse the script's flags (default ``sys.argv[1:]``) and run it; returns the final results.
main = partial(run_task, task=declare_task(ImageClassificationTask))
