"""Semantic segmentation as a :class:`~mona_peft.training.task.TrainingTask`: the task of
``scripts/train_semantic_segmentation.py`` (UperNet around a Swin / Swin v2 / DINOv2 checkpoint, or any
``AutoModelForSemanticSegmentation`` checkpoint such as DPT)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    SegformerImageProcessorPil,
    UperNetForSemanticSegmentation,
)

from ...sharing.model_card import CardTask, Score, normalise_metric_key
from ...training.config import RunConfig
from ...training.task import DENSE_METHOD_DEFAULTS, TrainingTask
from ...tuners.architectures import head_modules
from .data import (
    IGNORE_INDEX,
    SCENE_SIZE,
    load_segmentation_data,
    load_segmentation_task,
    scene_labels,
    segmentation_transform,
)
from .model import SEGMENTATION_CONFIG_FILE, build_upernet, save_segmentation_config

#: The shipped ``evaluate`` module (``evaluate.load("mean_iou")`` fetches its script from the Hub).
METRIC_PATH = str(Path(__file__).with_name("mean_iou"))


def segmentation_scores(metrics: Mapping[str, float]) -> list[Score]:
    """The model-index's mean IoU, then mean and overall pixel accuracy."""
    names = {"mean_iou": "Mean IoU", "mean_accuracy": "Mean Accuracy", "overall_accuracy": "Overall Accuracy"}
    found = {normalise_metric_key(k): float(v) for k, v in metrics.items() if normalise_metric_key(k) in names}
    return [(key, names[key], found[key], None) for key in names if key in found]


class DenseTask(TrainingTask):
    """What the dense tasks share (semantic segmentation, detection, instance segmentation): the dense methods'
    defaults, an offline scene task as the default data, the heads (everything outside the backbone, found from the
    model) and the files beside the adapter (the processor the run built, and for a model built around a backbone
    checkpoint the config its ``load_*_base`` rebuilds it from)."""

    method_defaults = DENSE_METHOD_DEFAULTS
    #: The offline scene task the data defaults to.
    default_task: str = ""
    #: The schedule of the full offline scene tasks (``scene_tasks``), which every dense task's recipe starts from.
    run_defaults = {"num_train_epochs": 6, "per_device_train_batch_size": 16}

    def _shipped(self, config: RunConfig) -> bool:
        return config.model_name_or_path == self.default_model()

    def save_base_config(self, model: nn.Module, output_dir: Path) -> None:
        """Write the config the card's ``load_*_base`` rebuilds the base model from."""
        raise NotImplementedError

    def head_modules(self, model: nn.Module) -> list[str]:
        return head_modules(model)

    def save_extras(self, model: nn.Module, processor: Any, output_dir: Path) -> None:
        processor.save_pretrained(output_dir)
        if getattr(model.config, "backbone_checkpoint", None):
            self.save_base_config(model, output_dir)


@dataclass
class SegmentationArguments:
    """The flags only semantic segmentation has (besides :class:`~mona_peft.training.config.RunConfig`'s)."""

    do_reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Masks use 0 for 'not scored' and 1..N for the classes, which id2label.json names from id 0 "
            "(ADE20K); the offline scenes' background is then not scored."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Training and evaluation resolution (default 512; 32 for the offline task)."}
    )
    decoder_hidden_size: int | None = field(
        default=None, metadata={"help": "UperNet channels (default 512; 64 for the shipped small backbone)."}
    )


class SemanticSegmentationTask(DenseTask):
    """Masks of class ids per pixel (255: not scored); mean IoU, mean accuracy, overall accuracy and per-class IoU.

    ``--model_name_or_path`` is either a segmentation checkpoint (UperNet, DPT: loaded with fresh heads for the
    data's classes) or a backbone checkpoint (Swin, Swin v2, DINOv2), around which an UperNet with fresh heads is
    built. The heads are found from the model (everything outside the backbone) and train with every method.
    """

    name = "semantic_segmentation"
    pipeline_tag = "image-segmentation"
    card = CardTask("semantic_segmentation.md", "image-segmentation", "Semantic Segmentation", segmentation_scores)
    default_output_dir = "outputs/mona-digit-scenes"
    default_task = default_dataset = "digit-scenes"
    arguments_class = SegmentationArguments
    # UperNet's pyramid pooling normalises 1x1 maps with BatchNorm: a last training batch of one image would fail.
    drop_last_train = True
    # The offline default's recipe (a few minutes on 2 CPU cores); AdamW with the poly schedule of the paper's recipe.
    # The rate: Mona's validation mIoU in the segmentation benchmark was 51.3 / 55.9 / 56.0 % at 3e-3 / 1e-2 / 3e-2
    # (benchmarks/segmentation); 1e-2 is the lower of its two level rates, where full fine-tuning still trains.
    run_defaults = {
        **DenseTask.run_defaults,
        "per_device_eval_batch_size": 100,
        "learning_rate": 1e-2,
        "weight_decay": 0.01,
        "lr_scheduler_type": "polynomial",
    }

    def __init__(self, arguments: SegmentationArguments | None = None) -> None:
        self.arguments = arguments or SegmentationArguments()

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        reduce_labels = self.arguments.do_reduce_labels
        if config.task:
            data, labels = load_segmentation_task(config.task, config.task_seed or 0)
            labels = scene_labels(labels, reduce_labels)
        else:
            data, labels = load_segmentation_data(**config.data_sources(), reduce_labels=reduce_labels)
        self.train_size = len(data["train"])  # for the batch check once the model is known (load_model)
        return data, labels

    def load_processor(self, config: RunConfig) -> Any:
        size = self.arguments.image_size or (SCENE_SIZE if self._shipped(config) else 512)
        if AutoConfig.from_pretrained(config.model_name_or_path).model_type not in ("upernet", "dpt"):
            # A backbone checkpoint's processor classifies (it may crop or resize to its own size): build one.
            backbone = AutoImageProcessor.from_pretrained(config.model_name_or_path)
            return SegformerImageProcessorPil(
                size={"height": size, "width": size},
                image_mean=backbone.image_mean,
                image_std=backbone.image_std,
                do_reduce_labels=self.arguments.do_reduce_labels,
            )
        processor = AutoImageProcessor.from_pretrained(
            config.model_name_or_path, do_reduce_labels=self.arguments.do_reduce_labels
        )
        if self.arguments.image_size:
            processor.size = {"height": size, "width": size}
        return processor

    def transform(self, processor: Any, train: bool) -> Any:
        return segmentation_transform(processor)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in examples[0]}

    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        model_type = AutoConfig.from_pretrained(config.model_name_or_path).model_type
        if model_type in ("upernet", "dpt"):
            model = AutoModelForSemanticSegmentation.from_pretrained(
                config.model_name_or_path,
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
            )
            _refuse_batches_of_one(model, config, getattr(self, "train_size", None))
            return model
        hidden = self.arguments.decoder_hidden_size or (64 if self._shipped(config) else 512)
        model = build_upernet(config.model_name_or_path, labels, hidden_size=hidden)
        _refuse_batches_of_one(model, config, getattr(self, "train_size", None))
        return model

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """Mean IoU and the other scores of the shipped ``evaluate`` module, logits upsampled to the mask size."""
        metric = evaluate.load(METRIC_PATH, experiment_id=f"mona-{os.getpid()}-{time.time_ns()}")
        model.eval()
        for batch in loader:
            with torch.no_grad():
                logits = model(pixel_values=batch["pixel_values"]).logits
            logits = F.interpolate(
                logits.float(), size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False
            )
            predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=1), batch["labels"]))
            metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())
        scores = metric.compute(num_labels=len(labels), ignore_index=IGNORE_INDEX, reduce_labels=False)
        results = {k: float(scores[k]) for k in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        results["per_category_iou"] = [round(float(v), 6) for v in scores["per_category_iou"]]
        return results

    def save_base_config(self, model: nn.Module, output_dir: Path) -> None:
        save_segmentation_config(model, output_dir)


def _refuse_batches_of_one(model: nn.Module, config: RunConfig, train_size: int | None) -> None:
    """UperNet's pyramid pooling normalises 1x1 maps with BatchNorm, which has one value per channel to normalise in a
    batch of one image and fails deep inside the first step: refuse such batches before training instead."""
    if not isinstance(model, UperNetForSemanticSegmentation):
        return
    why = "UperNet's pyramid pooling normalises 1x1 maps with BatchNorm, which needs at least 2 images per batch"
    if config.per_device_train_batch_size < 2:
        raise SystemExit(f"error: --per_device_train_batch_size 1: {why}; use 2 or more.")
    if train_size is not None and train_size < 2:
        raise SystemExit(
            f"error: the training data holds {train_size} image: {why}; give it at least 2 (with no --validation_dir, "
            "--validation_fraction takes part of the training images)."
        )


__all__ = ["SEGMENTATION_CONFIG_FILE", "SegmentationArguments", "SemanticSegmentationTask"]
