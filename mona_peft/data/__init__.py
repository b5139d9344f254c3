"""Data for the training scripts, the benchmarks and the tests; everything offline comes from installed packages.

- :mod:`.image_classification`: Hub datasets and image folders for classification, the transform and collate.
- :mod:`.offline`: scikit-learn's digits (read once, for every offline use) and the benchmark's classification tasks.
- :mod:`.fashion_mnist`: Fashion-MNIST's idx files (Debian's ``dataset-fashion-mnist``) as arrays and as the shipped
  backbones' inputs, for their pretraining (:mod:`mona_peft.backbones.pretraining`).
- :mod:`.segmentation`: segmentation folders (``images/`` + ``masks/``), Hub datasets, the offline digit scenes.
"""

from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FashionMNISTNotFoundError,
    fashion_mnist_tensors,
    load_fashion_mnist,
    pixel_values_from_uint8,
)
from .image_classification import (
    IMAGE_SUFFIXES,
    ImageDataError,
    check_image_folder,
    collate,
    image_transform,
    load_image_classification_data,
)
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
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "IMAGE_SUFFIXES",
    "TASKS",
    "TEXTURE_IMAGES",
    "FashionMNISTNotFoundError",
    "ImageDataError",
    "Task",
    "check_image_folder",
    "collate",
    "digits_dataset",
    "digits_split_indices",
    "digits_tensors",
    "fashion_mnist_tensors",
    "image_transform",
    "load_digits_arrays",
    "load_fashion_mnist",
    "load_image_classification_data",
    "load_task",
    "pixel_values_from_uint8",
    "texture_crop_boxes",
]
