"""What every task's data loaders share: the image files they read, their full decoding, and the error that names a
bad one."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageDataError(ValueError):
    """An image folder or dataset that cannot be used, with what is wrong and where."""


def decode_image(path: str | Path) -> Image.Image:
    """The image at ``path``, decoded whole (a truncated or corrupt file fails here, not in the middle of training,
    where the loader decodes it lazily); an :class:`ImageDataError` names the file and what is wrong."""
    try:
        # closed on the way out (a multi-frame GIF or TIFF would keep its file open); the decoded pixels stay
        with Image.open(path) as image:
            image.load()  # every pixel: opening reads the header only, and verify() does not decode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageDataError(f"{path} is not a readable image ({type(error).__name__}: {error})") from None
    return image
