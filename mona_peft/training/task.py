"""What differs between tasks (classification, segmentation, detection): one small interface for the training core.

The core (:mod:`mona_peft.training.run`) does everything else the same way for every task: the output dir and its
guard, Accelerate, the method, AdamW with the adapter learning-rate scale, the schedule, adapter-only checkpoints and
resumption, logging, MiMi, the results file, the model card and the push.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from accelerate import Accelerator
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader

from ..data.splits import is_held_out
from ..sharing.model_card import CardTask, write_model_card
from .config import RunConfig

#: The dense tasks' method defaults: Mona recomputes its inside in the backward pass. UperNet around a Swin-T at 512 px
#: needed 0.92x full fine-tuning's peak memory with it, 0.99x without, for no measurable step cost
#: (benchmarks/segmentation/speed_recompute.json); at 224 px on a classifier the step costs 8-14 % more, so
#: classification keeps it off.
DENSE_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"mona": {"gradient_checkpointing": True}}


#: Folder names that name a split rather than a dataset (``data/train``): the card names the parent folder instead.
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "trn", "val", "valid", "validation", "test", "images"})


def folder_dataset_name(folder: str | Path) -> str:
    """The dataset's name for a local folder: its own, or its parent's where it is named after a split."""
    path = Path(folder).resolve()
    return path.parent.name if path.name.lower() in SPLIT_FOLDER_NAMES and path.parent.name else path.name


class TrainingTask(ABC):
    """The task-specific parts of a fine-tuning run: data, model and head, batches, metric, model card."""

    #: The task's name: its folder in ``mona_peft/tasks/``, e.g. ``"semantic_segmentation"``.
    name: str
    #: The Hub's pipeline tag, e.g. ``"image-classification"``.
    pipeline_tag: str
    #: The task's model card: template (in ``model_cards/``), the model-index's task and scores.
    card: CardTask
    #: ``--output_dir`` when none is given.
    default_output_dir: str
    #: A dataclass of the task's own flags (parsed beside ``RunConfig``), passed to the constructor; or None.
    arguments_class: type | None = None
    #: ``RunConfig`` defaults of the task's script (its recipe), e.g. ``{"num_train_epochs": 8}``.
    run_defaults: dict[str, Any] = {}
    #: Per method, option defaults of this task (``--inner_dim`` and the like override them).
    method_defaults: dict[str, dict[str, Any]] = {}
    #: Drop the last, incomplete training batch (when the split holds more than one batch): for models whose training
    #: mode fails on a batch of one (BatchNorm over 1x1 maps).
    drop_last_train: bool = False
    #: The card's name of the data when no ``--dataset_name``, ``--train_dir`` or ``--task`` is given.
    default_dataset: str = "data"

    def default_model(self) -> str:
        """``--model_name_or_path`` when none is given: the shipped pretrained backbone."""
        from ..backbones import backbone_path

        return str(backbone_path("swin"))

    def dataset_label(self, config: RunConfig) -> str:
        """The data's name for the model card: ``--dataset_name``, the training folder's name (its parent's where the
        folder is named after a split, ``data/train``), ``--task``, or the offline default's."""
        if config.dataset_name:
            return config.dataset_name
        if config.train_dir:
            return folder_dataset_name(config.train_dir)
        return config.task or self.default_dataset

    def evaluated_on(self, config: RunConfig, data: DatasetDict) -> str:
        """Where the card's results come from (Markdown): the validation folder, the share of the training data held
        out, or the validation split of the named dataset; never the training split."""
        dataset, validation = f"**{self.dataset_label(config)}**", data["validation"]
        if is_held_out(validation):
            share = len(validation) / (len(validation) + len(data["train"]))
            return (
                f"{len(validation):,} images ({share:.0%}) held out from the training data of {dataset} "
                f"(seed {config.seed}) and not trained on"
            )
        if config.validation_dir:
            folder = Path(config.validation_dir).name
            return f"the validation folder `{folder}` of {dataset} ({len(validation):,} images)"
        return f"the validation split of {dataset} ({len(validation):,} images)"

    @abstractmethod
    def load_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        """``train`` and ``validation`` splits (and ``test`` when the data has one: evaluated once, at the end), and
        the class names in label-id order."""

    @abstractmethod
    def load_processor(self, config: RunConfig) -> Any:
        """The model's preprocessor (saved beside a whole model)."""

    @abstractmethod
    def transform(self, processor: Any, train: bool) -> Any:
        """A ``Dataset.with_transform`` function from raw examples to model inputs."""

    @abstractmethod
    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A batch from transformed examples: the keyword arguments of the model's forward, labels included."""

    @abstractmethod
    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        """The transformers model with a fresh head for ``labels``."""

    @abstractmethod
    def head_modules(self, model: nn.Module) -> list[str]:
        """Names of the modules outside the backbone that train with every method (``modules_to_save``)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """The task's metrics on ``loader`` (gathered over processes)."""

    def write_model_card(self, output_dir: Path, **card: Any) -> Path:
        """Render the task's model card (:attr:`card`) into ``output_dir/README.md``.

        The keyword arguments are those of :func:`mona_peft.sharing.model_card.render_model_card`.
        """
        return write_model_card(output_dir, task=self.card, **card)

    def settings(self) -> dict[str, Any]:
        """The task's own flags as given (its ``arguments_class`` instance, ``self.arguments``): what the run records
        beside ``RunConfig`` in its identity, so a run with other task settings is a different run."""
        arguments = getattr(self, "arguments", None)
        return asdict(arguments) if is_dataclass(arguments) else {}

    def save_extras(self, model: nn.Module, processor: Any, output_dir: Path) -> None:
        """Files the saved weights need besides themselves (none unless the task says so)."""
        return None

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch."""
        return model(**batch).loss


_TASKS: dict[str, type[TrainingTask]] = {}


def declare_task(task: type[TrainingTask]) -> type[TrainingTask]:
    """Declare a task (idempotent for the same name), as its package's ``__init__`` does; returns ``task``.

    Raises ``TypeError`` naming what a task must say and ``task`` does not.
    """
    missing = [name for name in ("name", "pipeline_tag", "card", "default_output_dir") if not hasattr(task, name)]
    if missing:
        raise TypeError(f"Task {task.__name__} does not set {', '.join(missing)} (see TrainingTask).")
    _TASKS[task.name] = task
    return task


def tasks() -> Mapping[str, type[TrainingTask]]:
    """Every declared task by name, in declaration order (read-only); ``import mona_peft.tasks`` declares them."""
    return MappingProxyType(_TASKS)
