"""One training core for every task, under Accelerate.

- :mod:`.config`: :class:`RunConfig`, the typed settings of one run (the scripts' flags are generated from it).
- :mod:`.task`: :class:`TrainingTask`, the task-specific parts (data, head, batches, metric, card); the tasks
  themselves live in :mod:`mona_peft.tasks`.
- :mod:`.run`: :func:`train`, the run itself, the same for every task.

Example::

    from mona_peft.tasks.image_classification import ImageClassificationTask
    from mona_peft.training import RunConfig, train

    config = RunConfig(method="mona", output_dir="outputs/mona-digits", report_to="none")
    results = train(config, ImageClassificationTask())
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig, parse_args
from .run import FineTuningRun, train
from .task import TrainingTask

__all__ = ["FineTuningRun", "RunConfig", "TrainingTask", "main", "parse_args", "train"]


def main(argv: list[str] | None = None, *, task: type[TrainingTask]) -> dict[str, Any]:
    """Parse the flags (``argv``, default ``sys.argv[1:]``) and run ``task``.

    The flags are :class:`RunConfig`'s plus those of the task's ``arguments_class``. Each task package wraps this as
    its own ``main`` (``mona_peft.tasks.image_classification.main``).
    """
    description = f"Fine-tune a model for {task.pipeline_tag} under Accelerate."
    if task.arguments_class is None:
        return train(parse_args(argv, description=description, defaults=task.run_defaults), task())
    config, arguments = parse_args(argv, description, extra=task.arguments_class, defaults=task.run_defaults)
    return train(config, task(arguments))
