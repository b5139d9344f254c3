"""Fashion-MNIST, the pretraining data of the shipped backbones, read from the idx files Debian installs.

:func:`load_fashion_mnist` returns the raw ``uint8`` arrays; :func:`fashion_mnist_tensors` turns them into the
backbones' inputs with :func:`pixel_values_from_uint8` (the transform of the shipped ``preprocessor_config.json``,
:data:`mona_peft.backbones.IMAGE_SIZE`, ``IMAGE_MEAN`` and ``IMAGE_STD``). Used by
:mod:`mona_peft.backbones.pretraining` and the backbone tests.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import FASHION_MNIST_CLASSES, IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "FashionMNISTNotFoundError",
    "fashion_mnist_tensors",
    "load_fashion_mnist",
    "pixel_values_from_uint8",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the original idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTNotFoundError(FileNotFoundError):
    """The Fashion-MNIST idx files are not where the loader looks for them."""


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed idx file (the MNIST file format) into a ``uint8`` array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (header {data[:4]!r})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} bytes")
    return array.reshape(shape).copy()  # writable, so torch.as_tensor does not warn


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split as ``uint8`` arrays.

    Returns ``(images, labels)`` with shapes ``(N, 28, 28)`` and ``(N,)``. Files are read from
    ``data_dir`` (default :data:`FASHION_MNIST_DIR`, where ``apt-get install dataset-fashion-mnist``
    puts them); missing files raise :class:`FashionMNISTNotFoundError` saying how to install them.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    paths = [directory / name for name in FASHION_MNIST_FILES[split]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it puts the idx .gz files in "
            f"{FASHION_MNIST_DIR}), or pass the folder that holds them as `data_dir`."
        )
    images, labels = (_read_idx(path) for path in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} {labels.shape[0]} labels")
    return images, labels


def pixel_values_from_uint8(images: np.ndarray | torch.Tensor, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Grayscale ``uint8`` images ``(N, H, W)`` -> ``pixel_values`` ``(N, 3, image_size, image_size)``.

    The same transform as the shipped ``preprocessor_config.json`` (bilinear resize, scale to [0, 1],
    normalise with mean = std = 0.5, gray repeated to RGB), in float32. The three channels are an
    ``expand`` view of one: indexing a batch out of the result makes a contiguous copy.
    """
    pixels = torch.as_tensor(images).to(torch.float32).unsqueeze(1) / 255.0
    if pixels.shape[-2:] != (image_size, image_size):
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixels = (pixels.clamp(0.0, 1.0) - IMAGE_MEAN[0]) / IMAGE_STD[0]
    return pixels.expand(-1, 3, -1, -1)


def fashion_mnist_tensors(
    split: str = "train",
    image_size: int = IMAGE_SIZE,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as model inputs: ``(pixel_values (N, 3, S, S) float32 in [-1, 1], labels (N,) int64)``.

    ``limit`` keeps the first ``limit`` examples (for quick runs).
    """
    images, labels = load_fashion_mnist(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return pixel_values_from_uint8(images, image_size), torch.from_numpy(labels.astype(np.int64))
