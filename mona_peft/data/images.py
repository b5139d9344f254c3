"""What every task's data loaders share: the image files they read and the error that names a bad one."""

from __future__ import annotations

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageDataError(ValueError):
    """An image folder or dataset that cannot be used, with what is wrong and where."""
