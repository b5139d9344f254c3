"""The tasks: one folder each, holding its data, model builder, :class:`~mona_peft.training.TrainingTask` and metric,
and naming its card template (in ``model_cards/``).

Adding a task: its folder, which declares its task at the bottom of its ``__init__``
(:func:`~mona_peft.training.task.declare_task`), plus its name in the import below.
:func:`~mona_peft.training.task.tasks` lists the declared tasks.
"""

# isort: off
from . import image_classification, semantic_segmentation, object_detection, instance_segmentation  # noqa: F401

# isort: on
from ..training.task import tasks

__all__ = ["tasks"]
