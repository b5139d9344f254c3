"""One training core for every task, under Accelerate.

- :mod:`.config`: :class:`RunConfig`, the typed settings of one run (the scripts' flags are generated from it).
- :mod:`.task`: :class:`TrainingTask`, the task-specific parts (data, head, batches, metric, card).
- :mod:`.run`: :func:`train`, the run itself, the same for every task.
- :mod:`.image_classification`: :class:`ImageClassificationTask`, the task of ``scripts/train_image_classification.py``.

Example::

    from mona_peft.training import RunConfig, train

    results = train(RunConfig(method="mona", output_dir="outputs/mona-digits", report_to="none"))
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig, parse_args
from .image_classification import ImageClassificationTask
from .run import FineTuningRun, train
from .task import TrainingTask

__all__ = ["FineTuningRun", "ImageClassificationTask", "RunConfig", "TrainingTask", "main", "parse_args", "train"]


def main(argv: list[str] | None = None, task: type[TrainingTask] = ImageClassificationTask) -> dict[str, Any]:
    """Parse the flags (``argv``, default ``sys.argv[1:]``) and run ``task`` (default: image classification).

    The flags are :class:`RunConfig`'s plus those of the task's ``arguments_class``.
    """
    description = f"Fine-tune a model for {task.pipeline_tag} under Accelerate."
    if task.arguments_class is None:
        return train(parse_args(argv, description=description, defaults=task.run_defaults), task())
    config, arguments = parse_args(argv, description, extra=task.arguments_class, defaults=task.run_defaults)
    return train(config, task(arguments))
