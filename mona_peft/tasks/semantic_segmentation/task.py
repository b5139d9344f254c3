"""Semantic segmentation as a :class:`~mona_peft.training.task.TrainingTask`: the task of
``scripts/train_semantic_segmentation.py`` (UperNet around a Swin / Swin v2 / DINOv2 / ConvNeXt checkpoint, EoMT
around a plain ViT, or a segmentation checkpoint: UperNet, DPT, EoMT)."""

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
    AutoModelForUniversalSegmentation,
    EomtForUniversalSegmentation,
    EomtImageProcessorPil,
    SegformerImageProcessorPil,
    UperNetForSemanticSegmentation,
)

from ...sharing.model_card import CardTask, Score, normalise_metric_key
from ...training.config import RunConfig
from ...training.task import DENSE_METHOD_DEFAULTS, TrainingTask
from ...tuners.architectures import head_modules
from ..task_models import label_maps
from .data import (
    IGNORE_INDEX,
    SCENE_SIZE,
    load_segmentation_data,
    load_segmentation_task,
    scene_labels,
    segmentation_transform,
)
from .model import (
    EOMT_BACKBONES,
    SEGMENTATION_CONFIG_FILE,
    UPERNET_BACKBONES,
    build_eomt,
    build_upernet,
    mask_targets,
    save_segmentation_config,
    semantic_logits,
)

#: Segmentation checkpoints loaded whole (with fresh class heads) rather than used as a backbone.
SEGMENTATION_CHECKPOINTS = ("upernet", "dpt", "eomt")
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
        default=None,
        metadata={
            "help": "Training and evaluation resolution (default 512; 32 for the offline task; EoMT: its ViT's "
            "pretraining resolution, or an EoMT checkpoint's)."
        },
    )
    decoder_hidden_size: int | None = field(
        default=None, metadata={"help": "UperNet channels (default 512; 64 for the shipped small backbone)."}
    )
    segmenter: str | None = field(
        default=None,
        metadata={
            "help": "The model built around a backbone checkpoint: 'upernet' (default where UperNet takes the "
            f"backbone: {', '.join(UPERNET_BACKBONES)}) or 'eomt' (default for a plain ViT: "
            f"{', '.join(EOMT_BACKBONES)})."
        },
    )
    num_queries: int | None = field(default=None, metadata={"help": "EoMT's mask queries (default 200)."})


class SemanticSegmentationTask(DenseTask):
    """Masks of class ids per pixel (255: not scored); mean IoU, mean accuracy, overall accuracy and per-class IoU.

    ``--model_name_or_path`` is either a segmentation checkpoint (UperNet, DPT, EoMT: loaded with fresh heads for the
    data's classes) or a backbone checkpoint, around which a model with fresh heads is built: UperNet (Swin, Swin v2,
    DINOv2, ConvNeXt) or EoMT (a plain ViT; ``--segmenter``). The heads are found from the model (everything outside
    the backbone) and train with every method.
    """

    name = "semantic_segmentation"
    pipeline_tag = "image-segmentation"
    card = CardTask("semantic_segmentation.md", "image-segmentation", "Semantic Segmentation", segmentation_scores)
    default_output_dir = "outputs/mona-digit-scenes"
    default_task = default_dataset = "digit-scenes"
    arguments_class = SegmentationArguments
    #: The model classifies masks (EoMT) rather than pixels: its loss takes each image's class masks.
    classifies_masks = False
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

    def _segmenter(self, config: RunConfig) -> str:
        """What ``--model_name_or_path`` becomes: a whole segmentation checkpoint ('upernet', 'dpt', 'eomt'), or
        the model built around a backbone checkpoint ('upernet' or 'eomt', ``--segmenter``)."""
        model_type = AutoConfig.from_pretrained(config.model_name_or_path).model_type
        if model_type in SEGMENTATION_CHECKPOINTS:
            return model_type
        takes = {"upernet": UPERNET_BACKBONES, "eomt": EOMT_BACKBONES}
        chosen = self.arguments.segmenter or ("upernet" if model_type in UPERNET_BACKBONES else "eomt")
        if chosen not in takes or model_type not in takes[chosen]:
            offers = [f"{name} ({', '.join(types)})" for name, types in takes.items()]
            raise SystemExit(
                f"error: --segmenter {chosen} around a {model_type!r} checkpoint: the segmenters and the backbones "
                f"they take are {'; '.join(offers)}."
            )
        return chosen

    def _image_size(self, config: RunConfig) -> int:
        if self.arguments.image_size:
            return self.arguments.image_size
        if self._segmenter(config) == "eomt":  # its position table has one size: the ViT's, or the checkpoint's
            return AutoConfig.from_pretrained(config.model_name_or_path).image_size
        return SCENE_SIZE if self._shipped(config) else 512

    def load_processor(self, config: RunConfig) -> Any:
        size = self._image_size(config)
        if not self._is_checkpoint(config) or self._segmenter(config) == "eomt":
            # A backbone's processor classifies (it may crop or resize to its own size), and EoMT's slides windows
            # at inference: training resizes every image and its mask to one size.
            known = AutoImageProcessor.from_pretrained(config.model_name_or_path)
            return SegformerImageProcessorPil(
                size={"height": size, "width": size},
                image_mean=known.image_mean,
                image_std=known.image_std,
                do_reduce_labels=self.arguments.do_reduce_labels,
            )
        processor = AutoImageProcessor.from_pretrained(
            config.model_name_or_path, do_reduce_labels=self.arguments.do_reduce_labels
        )
        if self.arguments.image_size:
            processor.size = {"height": size, "width": size}
        return processor

    def _is_checkpoint(self, config: RunConfig) -> bool:
        return AutoConfig.from_pretrained(config.model_name_or_path).model_type in SEGMENTATION_CHECKPOINTS

    def transform(self, processor: Any, train: bool) -> Any:
        return segmentation_transform(processor)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in examples[0]}

    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        segmenter, path = self._segmenter(config), config.model_name_or_path
        if self._is_checkpoint(config):
            auto = AutoModelForUniversalSegmentation if segmenter == "eomt" else AutoModelForSemanticSegmentation
            model = auto.from_pretrained(path, **label_maps(labels), ignore_mismatched_sizes=True)
            if segmenter == "eomt" and self._image_size(config) != model.config.image_size:
                raise SystemExit(
                    f"error: --image_size {self._image_size(config)}: {path} is an EoMT checkpoint of "
                    f"{model.config.image_size}x{model.config.image_size} images (its position table's size)."
                )
        elif segmenter == "eomt":
            model = build_eomt(path, labels, self._image_size(config), self.arguments.num_queries or 200)
        else:
            hidden = self.arguments.decoder_hidden_size or (64 if self._shipped(config) else 512)
            model = build_upernet(path, labels, hidden_size=hidden)
        _refuse_batches_of_one(model, config, getattr(self, "train_size", None))
        self.classifies_masks = isinstance(model, EomtForUniversalSegmentation)
        return model

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pixel cross-entropy (UperNet, DPT), or a mask classifier's matched class and mask losses (EoMT), whose
        targets are each image's class masks."""
        if not self.classifies_masks:
            return super().loss(model, batch)
        return model(pixel_values=batch["pixel_values"], **mask_targets(batch["labels"], IGNORE_INDEX)).loss

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """Mean IoU and the other scores of the shipped ``evaluate`` module, class scores upsampled to the mask size."""
        metric = evaluate.load(METRIC_PATH, experiment_id=f"mona-{os.getpid()}-{time.time_ns()}")
        model.eval()
        for batch in loader:
            with torch.no_grad():
                logits = semantic_logits(model(pixel_values=batch["pixel_values"]))
            logits = F.interpolate(
                logits.float(), size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False
            )
            predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=1), batch["labels"]))
            metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())
        scores = metric.compute(num_labels=len(labels), ignore_index=IGNORE_INDEX, reduce_labels=False)
        results = {k: float(scores[k]) for k in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        results["per_category_iou"] = [round(float(v), 6) for v in scores["per_category_iou"]]
        return results

    def save_extras(self, model: nn.Module, processor: Any, output_dir: Path) -> None:
        """The processor a pipeline uses beside the adapter: for EoMT, transformers' own, which slides windows of the
        training size over an image whose short side it resized to that size, and merges their class scores."""
        if self.classifies_masks:
            side = processor.size["height"]
            processor = EomtImageProcessorPil(
                size={"shortest_edge": side, "longest_edge": None},
                do_split_image=True,
                image_mean=processor.image_mean,
                image_std=processor.image_std,
            )
        super().save_extras(model, processor, output_dir)

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
