"""Offline image-classification data built from real images that ship with installed packages.

scikit-learn's bundled digits are read in one place (:func:`load_digits_arrays`) for the training script's default
(:func:`digits_dataset`), quick probes (:func:`digits_tensors`), the benchmark tasks below and the segmentation scenes
(:mod:`mona_peft.tasks.semantic_segmentation.data`). The benchmark's downstream tasks; none of them is
Fashion-MNIST, which the shipped backbones were pretrained on:

- ``digits``: scikit-learn's bundled handwritten digits (8x8 grayscale scans, upsampled to 32x32), 10 classes,
  60 / 20 / 50 images per class for train / validation / test.
- ``digits-fewshot``: the same digits with 10 training and 10 validation images per class (the low-data task);
  its test split is the ``digits`` test split, so the two tasks measure the effect of the data size.
- ``textures``: which of 10 scikit-image sample photographs (brick, grass, gravel, camera, coins, moon, astronaut,
  coffee, chelsea, rocket; converted to grayscale) a 48x48 crop comes from, resized to 32x32; 60 / 20 / 50 crops
  per class. Each photograph is rescaled to a short side of 256 and cut into 64x64 blocks; every block belongs to
  one split only, so training, validation and test crops never share a pixel.

``load_task(name, seed)`` returns a ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test`` splits, an
``image`` column (PIL images) and a ``ClassLabel`` ``label`` column (the format of
:mod:`mona_peft.tasks.image_classification.data`). ``seed`` picks which images (digits) or blocks and crop positions
(textures) go where; the split sizes never change. Choose hyper-parameters on ``validation``; report ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from .splits import hold_out_validation

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIGITS_NAME",
    "TASKS",
    "TEXTURE_IMAGES",
    "Task",
    "digits_dataset",
    "digits_split_indices",
    "digits_tensors",
    "load_digits_arrays",
    "load_task",
    "texture_crop_boxes",
]

IMAGE_SIZE = 32
SPLITS = ("train", "validation", "test")

#: Digits images per class in each split (the few-shot task shares the test split).
DIGITS_PER_CLASS = {"train": 60, "validation": 20, "test": 50}
DIGITS_FEWSHOT_PER_CLASS = {"train": 10, "validation": 10, "test": 50}

#: scikit-image sample images (they ship inside the scikit-image wheel; no download).
TEXTURE_IMAGES = ("brick", "grass", "gravel", "camera", "coins", "moon", "astronaut", "coffee", "chelsea", "rocket")
TEXTURES_PER_CLASS = {"train": 60, "validation": 20, "test": 50}
TEXTURE_SHORT_SIDE = 256
TEXTURE_BLOCK = 64
TEXTURE_CROP = 48
#: Share of each photograph's blocks that goes to each split.
TEXTURE_BLOCK_SHARES = {"train": 0.5, "validation": 0.25, "test": 0.25}


@dataclass(frozen=True)
class Task:
    """A downstream task: how to build it, and the training schedule every method gets on it."""

    name: str
    description: str
    build: Callable[[int], DatasetDict]
    epochs: int
    batch_size: int
    low_data: bool = False


#: The dataset name of the training script's offline default (cards, results).
DIGITS_NAME = "sklearn-digits"


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: ``(images, targets)``, 1,797 8x8 float images with ink in 0..16, and labels.

    Every offline digits loader (the training script's default, the benchmark tasks, the backbone probe, the
    segmentation scenes) reads them here. Read-only arrays: callers derive their own.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


def _digits_uint8() -> np.ndarray:
    """The digits as uint8 grayscale (ink 16 -> 255), as PIL images of them store it."""
    return (load_digits_arrays()[0] * (255.0 / 16.0)).round().astype(np.uint8)


def _features(names: list[str]) -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=names)})


# ------------------------------------------------------------------------------------------------------- digits


def digits_split_indices(seed: int = 0, per_class: dict[str, int] = DIGITS_PER_CLASS) -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` of each split: stratified, disjoint, seeded.

    Per class, one seeded permutation is cut into test, then validation, then train, so tasks with the same test
    size share the test split.
    """
    target = load_digits_arrays()[1]
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in range(10):
        order = rng.permutation(np.flatnonzero(target == label))
        start = 0
        for split in ("test", "validation", "train"):
            count = per_class[split]
            if start + count > len(order):
                raise ValueError(f"digit {label} has {len(order)} images; {per_class} asks for more.")
            chosen[split].extend(order[start : start + count].tolist())
            start += count
    return {split: np.sort(np.asarray(indices)) for split, indices in chosen.items()}


def _digits(seed: int, per_class: dict[str, int]) -> DatasetDict:
    pixels, targets = _digits_uint8(), load_digits_arrays()[1]
    features = _features([str(d) for d in range(10)])
    splits = {}
    for split, indices in digits_split_indices(seed, per_class).items():
        images = [
            PILImage.fromarray(pixels[i], mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), PILImage.Resampling.BILINEAR)
            for i in indices
        ]
        splits[split] = Dataset.from_dict({"image": images, "label": targets[indices].tolist()}, features=features)
    return DatasetDict(splits)


def digits_dataset(seed: int = 0, validation_fraction: float = 0.2) -> DatasetDict:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 grayscale images, 10 classes).

    The offline default of the training script: it ships with a dependency, so it needs no network.
    The split is stratified and seeded.
    """
    features = _features([str(d) for d in range(10)])
    images = [PILImage.fromarray(p, mode="L") for p in _digits_uint8()]
    data = Dataset.from_dict({"image": images, "label": load_digits_arrays()[1].tolist()}, features=features)
    return hold_out_validation(DatasetDict(train=data), validation_fraction, seed, stratify_by_column="label")


def digits_tensors(
    image_size: int = 32, seed: int = 0, validation_fraction: float = 0.2
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The digits as RGB tensors, for quick probes: ``(train_pixels, train_labels), (val_pixels, val_labels)``.

    Pixels are ``float32`` of shape ``(N, 3, image_size, image_size)`` scaled to [-1, 1] (bilinear upsampling);
    the split is a seeded permutation (not stratified).
    """
    import torch
    import torch.nn.functional as F

    raw, targets = load_digits_arrays()
    images = torch.from_numpy(raw.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(targets.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * (1 - validation_fraction))
    train, validation = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[validation], labels[validation])


# ----------------------------------------------------------------------------------------------------- textures


@lru_cache(maxsize=1)
def _texture_sources() -> tuple[np.ndarray, ...]:
    """The sample photographs as grayscale uint8 arrays, rescaled to a short side of ``TEXTURE_SHORT_SIDE``."""
    import skimage.data

    sources = []
    for name in TEXTURE_IMAGES:
        image = PILImage.fromarray(np.asarray(getattr(skimage.data, name)())).convert("L")
        scale = TEXTURE_SHORT_SIDE / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        sources.append(np.asarray(image.resize(size, PILImage.Resampling.LANCZOS)))
    return tuple(sources)


def texture_crop_boxes(seed: int = 0) -> dict[str, list[tuple[int, int, int, int, int]]]:
    """``(label, top, left, bottom, right)`` of every crop of each split of ``textures`` (source pixel coordinates).

    Each photograph's 64x64 blocks are shuffled (seeded) and dealt to the splits; every crop lies inside one block
    of its split, so crops of different splits never overlap.
    """
    rng = np.random.default_rng(seed)
    boxes: dict[str, list[tuple[int, int, int, int, int]]] = {split: [] for split in SPLITS}
    for label, source in enumerate(_texture_sources()):
        rows, cols = source.shape[0] // TEXTURE_BLOCK, source.shape[1] // TEXTURE_BLOCK
        blocks = rng.permutation(rows * cols)
        counts = {split: max(1, int(TEXTURE_BLOCK_SHARES[split] * len(blocks))) for split in ("validation", "test")}
        dealt = {
            "validation": blocks[: counts["validation"]],
            "test": blocks[counts["validation"] : counts["validation"] + counts["test"]],
            "train": blocks[counts["validation"] + counts["test"] :],
        }
        for split in SPLITS:
            for block in rng.choice(dealt[split], size=TEXTURES_PER_CLASS[split], replace=True):
                top = (block // cols) * TEXTURE_BLOCK + rng.integers(0, TEXTURE_BLOCK - TEXTURE_CROP + 1)
                left = (block % cols) * TEXTURE_BLOCK + rng.integers(0, TEXTURE_BLOCK - TEXTURE_CROP + 1)
                boxes[split].append((label, int(top), int(left), int(top) + TEXTURE_CROP, int(left) + TEXTURE_CROP))
    return boxes


def _textures(seed: int) -> DatasetDict:
    sources = _texture_sources()
    features = _features(list(TEXTURE_IMAGES))
    splits = {}
    for split, boxes in texture_crop_boxes(seed).items():
        images = [
            PILImage.fromarray(sources[label][top:bottom, left:right]).resize(
                (IMAGE_SIZE, IMAGE_SIZE), PILImage.Resampling.BILINEAR
            )
            for label, top, left, bottom, right in boxes
        ]
        splits[split] = Dataset.from_dict({"image": images, "label": [box[0] for box in boxes]}, features=features)
    return DatasetDict(splits)


# --------------------------------------------------------------------------------------------------------- registry

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "digits",
            "scikit-learn digits (8x8 scans upsampled to 32x32), 10 classes, 60/20/50 per class",
            lambda seed: _digits(seed, DIGITS_PER_CLASS),
            epochs=2,
            batch_size=32,
        ),
        Task(
            "digits-fewshot",
            "the same digits, 10 training and 10 validation images per class (test split shared with digits)",
            lambda seed: _digits(seed, DIGITS_FEWSHOT_PER_CLASS),
            epochs=10,
            batch_size=20,
            low_data=True,
        ),
        Task(
            "textures",
            "which of 10 scikit-image photographs a 48x48 grayscale crop comes from (32x32), 60/20/50 per class, "
            "disjoint blocks per split",
            _textures,
            epochs=2,
            batch_size=32,
        ),
    )
}


@lru_cache(maxsize=8)
def _load(name: str, seed: int) -> DatasetDict:
    return TASKS[name].build(seed)


def load_task(name: str, seed: int = 0) -> DatasetDict:
    """``train`` / ``validation`` / ``test`` splits of task ``name`` (``image``, ClassLabel ``label``), seeded.

    Built once per process and cached (datasets are immutable; ``with_transform`` returns new views).
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; available: {', '.join(TASKS)}.")
    return _load(name, int(seed))
