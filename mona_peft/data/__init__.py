"""The offline data sources every task draws on, from installed packages; each task's loaders live in its folder.

- :mod:`.offline`: scikit-learn's digits (read once, for every offline use) and the benchmark's classification tasks.
- :mod:`.images`: the image files the loaders read and :class:`ImageDataError`, which names a bad one.

Fashion-MNIST, the shipped backbones' pretraining data, is :mod:`mona_peft.backbones.fashion_mnist`.
"""

from .images import IMAGE_SUFFIXES, ImageDataError
from .offline import (
    DIGITS_NAME,
    TASKS,
    TEXTURE_IMAGES,
    Task,
    digits_dataset,
    digits_split_indices,
    digits_tensors,
    load_digits_arrays,
    load_task,
    texture_crop_boxes,
)

__all__ = [
    "DIGITS_NAME",
    "IMAGE_SUFFIXES",
    "TASKS",
    "TEXTURE_IMAGES",
    "ImageDataError",
    "Task",
    "digits_dataset",
    "digits_split_indices",
    "digits_tensors",
    "load_digits_arrays",
    "load_task",
    "texture_crop_boxes",
]
