"""The offline data sources every task draws on, from installed packages; each task's loaders live in its folder.

- :mod:`.offline`: scikit-learn's digits (read once, for every offline use) and the benchmark's classification tasks.
- :mod:`.images`: the image files the loaders read and :class:`ImageDataError`, which names a bad one.

Fashion-MNIST, the shipped backbones' pretraining data, is :mod:`mona_peft.backbones.fashion_mnist`.
"""

from . import offline
from .images import IMAGE_SUFFIXES, ImageDataError
from .offline import *  # noqa: F403  (what offline exports, as its __all__ lists)

__all__ = ["IMAGE_SUFFIXES", "ImageDataError", *offline.__all__]
