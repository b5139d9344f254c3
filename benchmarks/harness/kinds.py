"""The benchmark kinds, one table: what each trains (a task of :func:`mona_peft.training.task.tasks`), on which
offline tasks, the score that chooses the learning rate, the default methods, the grid and the recipe.

Everything else (the jobs, the workers, resumption, the rate choice, the results file) is the same for every kind
(:mod:`harness.runner`). The classification kind runs several tasks and measures each trained model's costs; the
dense kinds run one scene task and record a validation curve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mona_peft.tasks  # noqa: F401  (declares the training tasks)
from mona_peft.data import TASKS
from mona_peft.tasks.object_detection.data import DETECTION_TASKS
from mona_peft.tasks.semantic_segmentation.data import SEGMENTATION_TASKS
from mona_peft.training.task import TrainingTask, tasks
from mona_peft.tuners.registry import methods

from .rows import classification_row, dense_row

#: One learning-rate grid for every method of the classification benchmark, wide enough that each method's best rate
#: lies inside it: full fine-tuning peaks at 1e-3 to 3e-3, and with 3e-2 as the top, seven of the lighter methods
#: chose that edge.
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: How the dense reports name a schedule.
SCHEDULE_NAMES = {"polynomial": "poly", "cosine": "cosine", "linear": "linear"}


def all_methods() -> list[str]:
    """Every declared method (the classification benchmark's default)."""
    return list(methods())


def dense_methods() -> list[str]:
    """The methods the dense benchmarks run by default (``MethodSpec.dense``)."""
    return [name for name, spec in methods().items() if spec.dense]


@dataclass(frozen=True)
class BenchmarkKind:
    """One benchmark: the training task (a name of :func:`mona_peft.training.task.tasks`), its offline tasks, the
    score that chooses (a key of the task's ``evaluate``: the final validation one, mean over seeds), the default
    methods, the grid and recipe, and the report's words.

    ``several_tasks``: runs several offline tasks (rows and rates per task); otherwise one task, its rows without
    a ``task`` key (the dense results' format). ``every_seed``: every rate must have run every seed before the
    choice (else the rates are compared on the seeds they all ran). ``row`` turns a finished run into its result row
    (:mod:`harness.rows`); ``rows_file`` is the work dir's file of finished rows (resumption)."""

    task: str
    offline_tasks: Mapping[str, Any]
    default_tasks: tuple[str, ...]
    score: str
    default_methods: Callable[[], list[str]]
    lr_grid: tuple[float, ...]
    weight_decay: float
    max_grad_norm: float
    lr_scheduler_type: str
    eval_strategy: str
    row: Callable[..., dict]
    rows_file: str
    several_tasks: bool = False
    every_seed: bool = False
    val_key: str = "val_score"
    grid_key: str = "val_score_by_lr"
    title: str = ""
    model: str = ""
    per_class: str = ""
    label: str = ""
    described: str = ""
    per_class_label: str = ""

    @property
    def training_task(self) -> type[TrainingTask]:
        return tasks()[self.task]


KINDS: dict[str, BenchmarkKind] = {
    "image-classification": BenchmarkKind(
        task="image_classification",
        offline_tasks=TASKS,
        default_tasks=tuple(TASKS),
        score="top1",
        default_methods=all_methods,
        lr_grid=LR_GRID,
        weight_decay=0.05,
        max_grad_norm=5.0,
        lr_scheduler_type="cosine",
        eval_strategy="end",
        row=classification_row,
        rows_file="rows.jsonl",
        several_tasks=True,
        every_seed=True,
        val_key="val_top1",
        grid_key="mean_validation_top1",
        title="Downstream benchmark",
        label="top-1",
    ),
    # 1e-3 is left out of segmentation's grid: full fine-tuning stayed at all-background for 300 steps there. 3e-2
    # and 1e-1 were added after most methods chose the top of the grid (benchmarks/segmentation/run.sh).
    "semantic-segmentation": BenchmarkKind(
        task="semantic_segmentation",
        offline_tasks=SEGMENTATION_TASKS,
        default_tasks=("digit-scenes",),
        score="mean_iou",
        default_methods=dense_methods,
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        weight_decay=0.01,
        max_grad_norm=5.0,
        lr_scheduler_type="polynomial",
        eval_strategy="epoch",
        row=dense_row,
        rows_file="runs.jsonl",
        title="Semantic segmentation benchmark",
        model="UperNet (fresh decode and auxiliary heads)",
        per_class="per_category_iou",
        label="mIoU",
        described="mean IoU (%) over background and the digit classes",
        per_class_label="per class (bg, digits)",
    ),
    # RT-DETR's recipe (weight decay 1e-4, clipping 0.1), the default detector. The grid first stopped at 3e-3,
    # which every method chose; 1e-2 was added (Mona: validation box AP 0.07 at 1e-3, 0.25 at 3e-3).
    "object-detection": BenchmarkKind(
        task="object_detection",
        offline_tasks=DETECTION_TASKS,
        default_tasks=("digit-instances",),
        score="map",
        default_methods=dense_methods,
        lr_grid=(1e-3, 3e-3, 1e-2),
        weight_decay=1e-4,
        max_grad_norm=0.1,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        row=dense_row,
        rows_file="runs.jsonl",
        title="Object detection benchmark",
        model="RT-DETR (fresh encoder, decoder and heads; 20 denoising queries)",
        per_class="map_per_class",
        label="box AP",
        described="COCO box AP (%, IoU 0.50:0.95, 100 detections per image)",
        per_class_label="per class (digits)",
    ),
    "instance-segmentation": BenchmarkKind(
        task="instance_segmentation",
        offline_tasks=DETECTION_TASKS,
        default_tasks=("digit-instances",),
        score="mask_map",
        default_methods=dense_methods,
        lr_grid=(1e-3, 3e-3, 1e-2),
        weight_decay=0.05,
        max_grad_norm=0.1,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        row=dense_row,
        rows_file="runs.jsonl",
        title="Instance segmentation benchmark",
        model="Mask2Former (fresh pixel decoder, transformer decoder and heads)",
        per_class="mask_map_per_class",
        label="mask AP",
        described="COCO mask AP (%, IoU 0.50:0.95)",
        per_class_label="per class (digits)",
    ),
}
#: The kinds of ``scripts/benchmark_dense.py``.
DENSE_KINDS = [name for name, kind in KINDS.items() if not kind.several_tasks]


def kind_of(results_or_config: Mapping[str, Any]) -> BenchmarkKind:
    """The kind of a results file (or its config); classification results written before kinds had none."""
    config = results_or_config.get("config", results_or_config)
    return KINDS[config.get("kind", "image-classification")]
