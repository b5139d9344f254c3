"""Instance segmentation as a :class:`~mona_peft.training.task.TrainingTask`: the task of
``scripts/train_instance_segmentation.py`` (Mask2Former around a Swin checkpoint, or a Mask2Former checkpoint), with
COCO mask AP (and the box AP of the masks' boxes).

The flags follow transformers' ``examples/pytorch/instance-segmentation/run_instance_segmentation.py``
(``--image_height``, ``--image_width``, ``--do_reduce_labels``), its model (Mask2Former, loaded with
``ignore_mismatched_sizes`` for fresh class heads) and its evaluation (every query's instance, ``threshold=0.0``,
scored as COCO mask AP). Two differences: the COCO scores come from pycocotools
(:class:`~mona_peft.tasks.object_detection.coco.CocoEvaluator`) rather than torchmetrics, and the masks from
:func:`instance_predictions`, which upsamples the mask logits straight to the image's size (transformers'
post-processing goes through 384x384 and nearest neighbours, which shifts small masks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import DatasetDict
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForUniversalSegmentation,
    Mask2FormerImageProcessorPil,
)

from ...data.splits import hold_out_validation
from ...sharing.model_card import CardTask, Score
from ...training.config import RunConfig
from ..object_detection.coco import CocoEvaluator
from ..object_detection.data import (
    INSTANCE_SCENE_SIZE,
    decode_mask,
    detection_features,
    encode_mask,
    mask_box,
)
from ..object_detection.task import CocoTask, box_target, detection_scores
from ..task_models import label_maps
from .model import Mask2FormerSize, build_mask2former, save_instance_segmentation_config

#: What the evaluation scores: masks (COCO mask AP, first) and the boxes of the predicted masks (box AP).
IOU_TYPES = ("bbox", "segm")
#: Checkpoints loaded whole (with fresh class heads) rather than used as a backbone.
SEGMENTER_TYPES = ("mask2former",)
#: Mask2Former for the shipped three-stage Swin (48-192 channels) on the small digit scenes (2-4 digits, 3 classes).
#: The widths (64) match the backbone's and the detection task's; 20 queries are 5x the most instances in a scene
#: (COCO's 100 queries face up to ~50); 3 masked-attention layers (``decoder_layers`` 4) visit each of the three
#: feature levels once; the pixel decoder's deformable encoder has 2 layers instead of 6 (its largest map is half the
#: image's side). The mask loss samples one point per pixel of the predicted masks (``train_num_points`` is set from
#: the image size: 256 for the 32x32 scenes, whose masks are 16x16) instead of COCO's 12544, which would sample each
#: pixel about 50 times (at 64x64 scenes, 12 times cost 1.4x the step: 2.4 s instead of 1.7 s at batch 16, one thread).
SHIPPED_SIZE = Mask2FormerSize(
    hidden_dim=64,
    encoder_layers=2,
    decoder_layers=4,
    encoder_feedforward_dim=256,
    dim_feedforward=256,
    num_attention_heads=4,
    num_queries=20,
)
#: Mask2Former's processor rounds the image's sides up to a multiple of this (its ``size_divisor``).
SIZE_DIVISOR = 32


def instance_scores(metrics: Mapping[str, float]) -> list[Score]:
    """The model-index's COCO mask AP, AP50 and AP75, then box AP, AP50 and AP75."""
    return sorted(detection_scores(metrics), key=lambda row: not row[0].startswith("mask_"))  # stable within each


@dataclass
class InstanceSegmentationArguments:
    """The flags only instance segmentation has (besides :class:`~mona_peft.training.config.RunConfig`'s); the
    first three are run_instance_segmentation.py's."""

    image_height: int | None = field(
        default=None,
        metadata={"help": "Height after resizing (default 512; offline: the scenes'), rounded up to a multiple of 32."},
    )
    image_width: int | None = field(
        default=None,
        metadata={"help": "Width after resizing (default 512; offline: the scenes'), rounded up to a multiple of 32."},
    )
    do_reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "--dataset_name: semantic id 0 is background (not an instance); the classes are 1..N (ADE20K)."
        },
    )
    hidden_dim: int | None = field(
        default=None,
        metadata={"help": "Width of Mask2Former's pixel and transformer decoders (default 256; 64 offline)."},
    )
    num_queries: int | None = field(default=None, metadata={"help": "Mask queries (default 100; 20 offline)."})


class InstanceSegmentationTask(CocoTask):
    """COCO-style instance masks; COCO mask AP (AP, AP50, AP75, AP small/medium/large, AR), per-class mask AP and
    the box AP of the masks' boxes, from pycocotools.

    ``--model_name_or_path`` is either a Mask2Former checkpoint (loaded with fresh class heads for the data's
    classes) or a Swin / Swin v2 backbone checkpoint, around which a Mask2Former is built with a fresh pixel decoder,
    transformer decoder and heads. What is outside the backbone is found from the model and trains with every
    method. The data: the offline ``digit-instances`` scenes (default), ``--task``, local COCO folders with a mask
    on every annotation (``--train_dir``), or a Hub dataset in run_instance_segmentation.py's layout.
    """

    name = "instance_segmentation"
    pipeline_tag = "image-segmentation"
    card = CardTask("instance_segmentation.md", "image-segmentation", "Instance Segmentation", instance_scores)
    require_masks = True
    default_output_dir = "outputs/mona-digit-instances-masks"
    arguments_class = InstanceSegmentationArguments
    #: The instance-segmentation benchmark's recipe and Mona's rate there (validation mask AP 0.071 at 1e-3, 0.103 at
    #: 3e-3, 0.046 at 1e-2, seed 0, benchmarks/instance_segmentation).
    run_defaults = {**CocoTask.run_defaults, "learning_rate": 3e-3, "weight_decay": 0.05}

    def __init__(self, arguments: InstanceSegmentationArguments | None = None) -> None:
        self.arguments = arguments or InstanceSegmentationArguments()
        self.processor = None

    def _is_segmenter_checkpoint(self, config: RunConfig) -> bool:
        return AutoConfig.from_pretrained(config.model_name_or_path).model_type in SEGMENTER_TYPES

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        if self.arguments.do_reduce_labels and not config.dataset_name:
            raise SystemExit(
                "error: --do_reduce_labels applies to --dataset_name's semantic maps, whose id 0 is background; COCO "
                "annotations (--train_dir, --task, the offline default) give each instance its category and have no "
                "background id to drop: leave the flag out."
            )
        return super().load_data(config)

    def load_hub_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        return _load_hub_instance_data(config, self.arguments.do_reduce_labels)

    def _image_size(self, config: RunConfig) -> tuple[int, int]:
        """``--image_height`` and ``--image_width``, or their defaults."""
        default = INSTANCE_SCENE_SIZE if self._shipped(config) else 512
        return self.arguments.image_height or default, self.arguments.image_width or default

    def load_processor(self, config: RunConfig) -> Any:
        height, width = self._image_size(config)
        size = {"height": height, "width": width}
        if self._is_segmenter_checkpoint(config):
            processor = AutoImageProcessor.from_pretrained(config.model_name_or_path, size=size)
        else:  # a backbone's processor classifies: build Mask2Former's, with the backbone's normalisation
            backbone = AutoImageProcessor.from_pretrained(config.model_name_or_path)
            processor = Mask2FormerImageProcessorPil(
                size=size, do_normalize=True, image_mean=backbone.image_mean, image_std=backbone.image_std
            )
        self.processor = processor
        return processor

    def transform(self, processor: Any, train: bool) -> Any:
        def apply(batch: dict) -> dict:
            images = [image.convert("RGB") for image in batch["image"]]
            # One size for every image (no padding): the masks are resized to what the processor made of the image.
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
            size = tuple(pixel_values.shape[-2:])
            labels, targets = [], []
            for image_id, image, objects in zip(batch["image_id"], images, batch["objects"], strict=True):
                masks = [decode_mask(counts, image.height, image.width) for counts in objects["segmentation"]]
                labels.append(mask_labels(masks, objects["category"], objects["iscrowd"], size))
                if not train:
                    targets.append(_target(image_id, image, objects, masks))
            encoded = {"pixel_values": list(pixel_values), "labels": labels}
            return encoded | ({} if train else {"target": targets})

        return apply

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        batch = {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": [example["labels"] for example in examples],
        }
        if "target" in examples[0]:
            batch["target"] = [example["target"] for example in examples]
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(
            pixel_values=batch["pixel_values"],
            mask_labels=[labels["mask_labels"] for labels in batch["labels"]],
            class_labels=[labels["class_labels"] for labels in batch["labels"]],
        ).loss

    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        if self._is_segmenter_checkpoint(config):
            return AutoModelForUniversalSegmentation.from_pretrained(
                config.model_name_or_path, **label_maps(labels), ignore_mismatched_sizes=True
            )
        arguments = self.arguments
        if self._shipped(config):
            hidden_dim = arguments.hidden_dim or SHIPPED_SIZE.hidden_dim
            size = replace(
                SHIPPED_SIZE,
                hidden_dim=hidden_dim,
                encoder_feedforward_dim=4 * hidden_dim,
                dim_feedforward=4 * hidden_dim,
                num_queries=arguments.num_queries or SHIPPED_SIZE.num_queries,
                train_num_points=_mask_pixels(config.model_name_or_path, self._image_size(config)),
            )
        else:  # transformers' defaults (those of the COCO checkpoints)
            default = Mask2FormerSize()
            size = replace(
                default,
                hidden_dim=arguments.hidden_dim or default.hidden_dim,
                num_queries=arguments.num_queries or default.num_queries,
            )
        return build_mask2former(config.model_name_or_path, labels, size)

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """COCO mask AP and box AP of every query's instances (as run_instance_segmentation.py scores them:
        ``threshold=0.0``), from :func:`instance_predictions`; a prediction's box is its mask's."""
        evaluator = CocoEvaluator(labels, IOU_TYPES)
        model.eval()
        for batch in loader:
            with torch.no_grad():
                outputs = model(pixel_values=batch["pixel_values"])
            sizes = [target["size"] for target in batch["target"]]
            found = instance_predictions(outputs.class_queries_logits, outputs.masks_queries_logits, sizes)
            # Each image's ground truth and predictions as compact records (RLE masks), then gathered: one record
            # per image, so the samples a process repeats to fill its last batch are dropped.
            images = CocoEvaluator(labels, IOU_TYPES)
            for target, prediction in zip(batch["target"], found, strict=True):
                height, width = target["size"]
                images.add(target["image_id"], height, width, target, prediction)
            evaluator.merge(accelerator.gather_for_metrics(images.state(), use_gather_object=True))
        scores = evaluator.compute()
        results = {k: float(v) for k, v in scores.items() if k.startswith("mask_") and not k.endswith("per_class")}
        results |= {k: float(v) for k, v in scores.items() if not k.startswith("mask_") and not k.endswith("per_class")}
        results["mask_map_per_class"] = [round(float(v), 6) for v in scores["mask_map_per_class"]]
        return results

    def save_base_config(self, model: nn.Module, output_dir: Path) -> None:
        save_instance_segmentation_config(model, output_dir)


def _mask_pixels(backbone: str, size: tuple[int, int]) -> int:
    """Pixels of Mask2Former's predicted masks (at the backbone's first stride) for images of ``size`` (before the
    processor rounds them up)."""
    stride = AutoConfig.from_pretrained(backbone).patch_size
    height, width = (math.ceil(side / SIZE_DIVISOR) * SIZE_DIVISOR for side in size)
    return (height // stride) * (width // stride)


def mask_labels(
    masks: list[np.ndarray], categories: list[int], iscrowd: list[int], size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Mask2Former's training targets of one image: ``mask_labels`` (instances, height, width) float 0/1 at the
    model's input ``size``, and ``class_labels`` (instances,) the class indices (no background class: Mask2Former's
    "no object" is its extra class).

    What the Mask2Former processor makes of an instance-id map and ``instance_id_to_semantic_id`` (each mask resized
    with nearest neighbours), built from the masks themselves so that overlapping masks keep every pixel. Crowd
    regions and instances that vanish at ``size`` are left out (COCO's evaluation ignores crowds; Mask2Former
    trains without them).
    """
    height, width = size
    kept, classes = [], []
    for mask, category, crowd in zip(masks, categories, iscrowd, strict=True):
        if crowd:
            continue
        resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((width, height), Image.NEAREST))
        if resized.any():
            kept.append(resized)
            classes.append(int(category))
    stacked = np.stack(kept).astype(np.float32) if kept else np.zeros((0, height, width), dtype=np.float32)
    return {"mask_labels": torch.from_numpy(stacked), "class_labels": torch.tensor(classes, dtype=torch.long)}


def _target(image_id: int, image: Image.Image, objects: dict, masks: list[np.ndarray]) -> dict:
    """The ground truth the evaluator scores against, in the image's own pixels: :func:`box_target`'s and the masks."""
    stacked = np.stack(masks) if masks else np.zeros((0, image.height, image.width), dtype=bool)
    return {**box_target(image_id, image, objects), "masks": stacked}


def instance_predictions(
    class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, sizes: list[tuple[int, int]]
) -> list[dict[str, np.ndarray]]:
    """Each image's instances, as the evaluator takes them: ``masks`` (N, height, width) bool at the image's ``size``,
    ``scores``, ``labels`` and ``boxes`` (each mask's tight box, x1, y1, x2, y2 in pixels: a one-pixel mask is one
    pixel wide).

    ``post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=sizes, return_binary_maps=True)`` of
    Mask2Former's processor, but for the masks' resolution: the (query, class) pairs of the ``num_queries`` best
    class probabilities (the "no object" class left out), each scored by its class probability times the mean mask
    probability inside its mask, pairs whose mask is empty left out; the masks are the mask logits upsampled
    bilinearly to the image's size, above 0 (as Mask2Former's own inference). transformers upsamples to 384x384 first
    and then takes nearest neighbours, which shifts masks by up to 0.4 pixels at 64x64 and loses the corners of thin
    strokes: ground-truth logits scored 0.90 mask AP that way on the digit scenes. At a size of 384x384 the two are
    the same.
    """
    found = []
    class_probabilities = class_queries_logits.float().cpu().softmax(-1)[..., :-1]
    mask_logits = masks_queries_logits.float().cpu()
    num_queries, num_classes = class_probabilities.shape[1:]
    for probabilities, logits, size in zip(class_probabilities, mask_logits, sizes, strict=True):
        scores, pairs = probabilities.flatten().topk(num_queries)
        labels, queries = pairs % num_classes, pairs // num_classes
        upsampled = F.interpolate(logits[queries][None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        masks = upsampled > 0
        inside = masks.flatten(1).sum(1)
        mask_scores = (upsampled.sigmoid() * masks).flatten(1).sum(1) / (inside + 1e-6)
        keep = inside > 0
        masks = masks[keep].numpy()
        boxes = np.array([mask_box(mask) for mask in masks], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        found.append(
            {
                "masks": masks,
                "boxes": boxes,
                "scores": (scores * mask_scores)[keep].double().numpy(),
                "labels": labels[keep].numpy(),
            }
        )
    return found


# ------------------------------------------------------------------------------------------------ Hub datasets


def instance_objects(annotation: Any, do_reduce_labels: bool) -> dict[str, list]:
    """The ``objects`` of one annotation map in run_instance_segmentation.py's layout: its first channel holds
    semantic ids, its second instance ids, and every (semantic, instance) pair present is one instance of that class.
    ``do_reduce_labels``: semantic id 0 is background (no instance) and the classes are the ids minus one."""
    channels = np.asarray(annotation)
    if channels.ndim != 3 or channels.shape[-1] < 2:
        raise ValueError(
            f"An instance annotation needs a semantic and an instance channel, got an array of shape {channels.shape}."
        )
    semantic, instance = channels[..., 0].astype(np.int64), channels[..., 1].astype(np.int64)
    pairs = np.unique(np.stack([semantic, instance], axis=-1).reshape(-1, 2), axis=0)
    records = []
    for class_id, instance_id in pairs.tolist():
        if do_reduce_labels and class_id == 0:
            continue
        mask = (semantic == class_id) & (instance == instance_id)
        records.append(
            {
                "id": len(records) + 1,
                "category": class_id - 1 if do_reduce_labels else class_id,
                "bbox": mask_box(mask),
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": encode_mask(mask),
            }
        )
    names = ("id", "category", "bbox", "area", "iscrowd", "segmentation")
    return {name: [record[name] for record in records] for name in names}


def _load_hub_instance_data(config: RunConfig, do_reduce_labels: bool) -> tuple[DatasetDict, list[str]]:
    """A Hub dataset in the layout of run_instance_segmentation.py (``qubvel-hf/ade20k-mini``): ``image``,
    ``annotation`` (semantic ids in the first channel, instance ids in the second) and ``semantic_class_to_id``
    (class name -> semantic id), turned into detection rows (:mod:`mona_peft.tasks.object_detection.data`)."""
    from datasets import load_dataset

    data = load_dataset(config.dataset_name, config.dataset_config_name)
    missing = {"image", "annotation", "semantic_class_to_id"} - set(data["train"].column_names)
    if missing:
        raise ValueError(
            f"{config.dataset_name} has no {', '.join(sorted(missing))} column: --dataset_name takes "
            "run_instance_segmentation.py's layout (image, annotation with semantic and instance ids, "
            "semantic_class_to_id); local COCO folders go to --train_dir."
        )
    data = hold_out_validation(data, config.validation_fraction, config.seed)
    label2id = {name: int(i) for name, i in data["train"][0]["semantic_class_to_id"].items()}
    if do_reduce_labels:
        label2id = {name: i - 1 for name, i in label2id.items() if i != 0}
    id2label = {i: name for name, i in label2id.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{config.dataset_name}: class ids {sorted(id2label)} are not 0..N-1.")

    def convert(example: dict, index: int) -> dict:
        image = example["image"].convert("RGB")
        objects = instance_objects(example["annotation"], do_reduce_labels)
        unknown = sorted({c for c in objects["category"] if c not in id2label})
        if unknown:
            raise ValueError(
                f"{config.dataset_name}: row {index} has class id(s) {unknown} outside semantic_class_to_id's "
                f"0..{len(id2label) - 1}{' (after --do_reduce_labels)' if do_reduce_labels else ''}."
            )
        return {"image": image, "image_id": index + 1, "width": image.width, "height": image.height, "objects": objects}

    data = DatasetDict(
        {
            name: split.map(
                convert, with_indices=True, features=detection_features(), remove_columns=split.column_names
            )
            for name, split in data.items()
        }
    )
    return data, [id2label[i] for i in range(len(id2label))]


__all__ = [
    "IOU_TYPES",
    "SHIPPED_SIZE",
    "InstanceSegmentationArguments",
    "InstanceSegmentationTask",
    "instance_objects",
    "instance_predictions",
    "mask_labels",
]
