"""Object detection as a :class:`~mona_peft.training.task.TrainingTask`: the task of
``scripts/train_object_detection.py`` (a DETR-family detector around a Swin checkpoint, or any
``AutoModelForObjectDetection`` checkpoint), with COCO box AP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection

from ...data.splits import hold_out_validation
from ...sharing.model_card import CardTask, Score, normalise_metric_key
from ...training.config import RunConfig
from ..semantic_segmentation.task import DenseTask
from ..task_models import label_maps
from .coco import CocoEvaluator
from .data import INSTANCE_SCENE_SIZE, load_detection_data, load_detection_task
from .model import DETECTORS, DetectorSize, build_detector, save_detection_config

#: The detector of the offline default run (and of ``--detector`` when none is given): see ``DetectionArguments``.
DEFAULT_DETECTOR = "rt_detr"
#: The image processor of each detector (PIL-based: no torchvision here).
_PROCESSORS = {
    "rt_detr": "RTDetrImageProcessorPil",
    "conditional_detr": "ConditionalDetrImageProcessorPil",
    "detr": "DetrImageProcessorPil",
}


@dataclass
class DetectionArguments:
    """The flags only object detection has (besides :class:`~mona_peft.training.config.RunConfig`'s)."""

    detector: str = field(
        default=DEFAULT_DETECTOR,
        metadata={"help": f"Detector built around a backbone checkpoint: {', '.join(DETECTORS)}."},
    )
    image_square_size: int | None = field(
        default=None, metadata={"help": "Images are resized to this square (default 640; 32 offline)."}
    )
    d_model: int | None = field(
        default=None, metadata={"help": "Width of the detector's encoder and decoder (default 256; 64 offline)."}
    )
    num_queries: int | None = field(default=None, metadata={"help": "Object queries (default 300; 20 offline)."})


def detection_scores(metrics: Mapping[str, float]) -> list[Score]:
    """The model-index's COCO box AP, AP50 and AP75 (and mask AP where measured); unmeasured ones (-1) left out."""
    names = {
        "map": "AP",
        "map_50": "AP50",
        "map_75": "AP75",
        "mask_map": "Mask AP",
        "mask_map_50": "Mask AP50",
        "mask_map_75": "Mask AP75",
    }
    found = {normalise_metric_key(k): v for k, v in metrics.items() if normalise_metric_key(k) in names}
    return [(key, names[key], float(found[key]), None) for key in names if key in found and float(found[key]) >= 0]


class CocoTask(DenseTask):
    """What the COCO-annotated tasks share (detection and instance segmentation) besides :class:`DenseTask`'s: the
    data (the offline ``digit-instances`` scenes by default, ``--task``, local COCO folders with ``--train_dir``, or
    a Hub dataset through :meth:`load_hub_data`)."""

    default_task = default_dataset = "digit-instances"
    #: Every annotation of a local COCO folder must have a mask.
    require_masks: bool = False
    #: The COCO benchmarks' schedule; each task adds its benchmark's learning rate and weight decay.
    run_defaults = {
        **DenseTask.run_defaults,
        "per_device_eval_batch_size": 50,
        "max_grad_norm": 0.1,
        "lr_scheduler_type": "cosine",
    }

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        if config.task or not (config.dataset_name or config.train_dir):
            return load_detection_task(config.task or self.default_task, config.task_seed or 0)
        if config.dataset_name:
            return self.load_hub_data(config)
        return load_detection_data(
            config.train_dir,
            config.validation_dir,
            require_masks=self.require_masks,
            seed=config.seed,
            validation_fraction=config.validation_fraction,
        )

    def load_hub_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        """``--dataset_name``'s splits, as detection rows, and the class names."""
        raise NotImplementedError


class ObjectDetectionTask(CocoTask):
    """COCO-style boxes; COCO box AP (AP, AP50, AP75, AP small/medium/large, AR) from pycocotools.

    ``--model_name_or_path`` is either a detector checkpoint (loaded with fresh class heads for the data's classes)
    or a Swin / Swin v2 backbone checkpoint, around which ``--detector`` is built with a fresh encoder, decoder and
    heads. What is outside the backbone is found from the model and trains with every method.
    """

    name = "object_detection"
    pipeline_tag = "object-detection"
    card = CardTask("object_detection.md", "object-detection", "Object Detection", detection_scores)
    default_output_dir = "outputs/mona-digit-instances"
    arguments_class = DetectionArguments
    #: The detection benchmark's recipe and Mona's rate there (validation box AP 0.07 at 1e-3, 0.25 at 3e-3, 0.16 at
    #: 1e-2, seed 0, benchmarks/detection).
    run_defaults = {**CocoTask.run_defaults, "learning_rate": 3e-3, "weight_decay": 1e-4}

    def __init__(self, arguments: DetectionArguments | None = None) -> None:
        self.arguments = arguments or DetectionArguments()
        if self.arguments.detector not in DETECTORS:
            raise ValueError(f"Unknown --detector {self.arguments.detector!r}; available: {', '.join(DETECTORS)}.")
        self.processor = None

    def _is_detector_checkpoint(self, config: RunConfig) -> bool:
        model_type = AutoConfig.from_pretrained(config.model_name_or_path).model_type
        return model_type in DETECTORS

    def load_hub_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        return _load_hub_detection_data(config)

    def load_processor(self, config: RunConfig) -> Any:
        size = self.arguments.image_square_size or (INSTANCE_SCENE_SIZE if self._shipped(config) else 640)
        square = {"height": size, "width": size}
        if self._is_detector_checkpoint(config):
            processor = AutoImageProcessor.from_pretrained(config.model_name_or_path, size=square)
        else:  # a backbone's processor classifies: build the detector's, with the backbone's normalisation
            import transformers

            backbone = AutoImageProcessor.from_pretrained(config.model_name_or_path)
            processor = getattr(transformers, _PROCESSORS[self.arguments.detector])(
                size=square,
                do_normalize=True,
                image_mean=backbone.image_mean,
                image_std=backbone.image_std,
                do_pad=False,
            )
        self.processor = processor
        return processor

    def transform(self, processor: Any, train: bool) -> Any:
        def apply(batch: dict) -> dict:
            images = [image.convert("RGB") for image in batch["image"]]
            annotations = [
                {"image_id": image_id, "annotations": _coco_annotations(objects)}
                for image_id, objects in zip(batch["image_id"], batch["objects"], strict=True)
            ]
            encoded = processor(images=images, annotations=annotations, return_tensors="pt")
            return {
                "pixel_values": list(encoded["pixel_values"]),
                "labels": [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in encoded["labels"]],
                "target": [
                    box_target(image_id, image, objects)
                    for image_id, image, objects in zip(batch["image_id"], images, batch["objects"], strict=True)
                ],
            }

        return apply

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": [example["labels"] for example in examples],
            "target": [example["target"] for example in examples],
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss

    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        if self._is_detector_checkpoint(config):
            return AutoModelForObjectDetection.from_pretrained(
                config.model_name_or_path, **label_maps(labels), ignore_mismatched_sizes=True
            )
        shipped = self._shipped(config)
        default = DetectorSize()
        size = DetectorSize(
            d_model=self.arguments.d_model or (64 if shipped else default.d_model),
            decoder_layers=3 if shipped else default.decoder_layers,
            ffn_dim=4 * (self.arguments.d_model or (64 if shipped else default.d_model)),
            attention_heads=4 if shipped else default.attention_heads,
            num_queries=self.arguments.num_queries or (20 if shipped else default.num_queries),
            num_denoising=20 if shipped else default.num_denoising,
        )
        return build_detector(self.arguments.detector, config.model_name_or_path, labels, size)

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """COCO box AP of the post-processed detections (every query kept: COCO's 100 detections per image)."""
        evaluator = CocoEvaluator(labels, ("bbox",))
        model.eval()
        for batch in loader:
            with torch.no_grad():
                outputs = model(pixel_values=batch["pixel_values"])
            sizes = [target["size"] for target in batch["target"]]
            detections = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
            pairs = [
                (target, {k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in found.items()})
                for target, found in zip(batch["target"], detections, strict=True)
            ]
            for target, found in accelerator.gather_for_metrics(pairs, use_gather_object=True):
                height, width = target["size"]
                evaluator.add(target["image_id"], height, width, target, found)
        scores = evaluator.compute()
        results = {k: float(v) for k, v in scores.items() if not k.endswith("per_class")}
        results["map_per_class"] = [round(float(v), 6) for v in scores["map_per_class"]]
        return results

    def save_base_config(self, model: nn.Module, output_dir: Path) -> None:
        save_detection_config(model, output_dir)


def _coco_annotations(objects: dict) -> list[dict]:
    """The processors' COCO annotation dicts of one image's ``objects`` column."""
    return [
        {"bbox": list(bbox), "category_id": category, "area": area, "iscrowd": iscrowd}
        for bbox, category, area, iscrowd in zip(
            objects["bbox"], objects["category"], objects["area"], objects["iscrowd"], strict=True
        )
    ]


def box_target(image_id: int, image: Any, objects: dict) -> dict:
    """The ground truth the evaluator scores against, in the image's own pixels: the boxes, classes and crowd flags
    of one image's ``objects``."""
    return {
        "image_id": int(image_id),
        "size": (image.height, image.width),
        "boxes": np.asarray(objects["bbox"], dtype=np.float64).reshape(-1, 4),
        "labels": np.asarray(objects["category"], dtype=np.int64),
        "iscrowd": np.asarray(objects["iscrowd"], dtype=np.int64),
    }


def _load_hub_detection_data(config: RunConfig) -> tuple[DatasetDict, list[str]]:
    """A Hub dataset in the layout of transformers' object-detection example (``cppe-5``): ``image``, ``image_id``
    and ``objects`` with ``bbox`` (x, y, w, h), ``category`` (a ``ClassLabel``), ``area`` and optionally ``id``."""
    from datasets import load_dataset

    data = load_dataset(config.dataset_name, config.dataset_config_name)
    data = hold_out_validation(data, config.validation_fraction, config.seed)
    objects = data["train"].features["objects"]
    category = objects["category"] if isinstance(objects, dict) else objects.feature["category"]
    names = getattr(category, "feature", category).names

    def complete(objects: dict) -> dict:
        count = len(objects["bbox"])
        return {**objects, "iscrowd": objects.get("iscrowd") or [0] * count}

    data = data.map(lambda example: {"objects": complete(example["objects"])})
    return data, list(names)


__all__ = ["DEFAULT_DETECTOR", "DetectionArguments", "ObjectDetectionTask"]
