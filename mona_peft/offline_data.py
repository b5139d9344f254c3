"""Small real image sets that ship with installed packages, for offline runs and tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def digits_tensors(image_size: int = 32, seed: int = 0, validation_fraction: float = 0.2):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as RGB tensors.

    Returns ``(train_pixels, train_labels), (validation_pixels, validation_labels)``; pixels are
    ``float32`` of shape ``(N, 3, image_size, image_size)`` scaled to [-1, 1]; the split is
    stratified-free but seeded.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * (1 - validation_fraction))
    train, validation = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[validation], labels[validation])
