"""Small Swin and ViT backbones pretrained on Fashion-MNIST, shipped with the package.

No pretrained ViT/Swin weights can be downloaded where this project is developed and tested, so it
pretrains its own: a small ``SwinForImageClassification`` and a small ``ViTForImageClassification``
for 3-channel 32x32 inputs (Fashion-MNIST's 28x28 grayscale images, resized to 32x32 and repeated to
RGB, scaled to [-1, 1]). The checkpoints live in this folder, one transformers-format folder each::

    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from mona_peft.backbones import backbone_path

    model = AutoModelForImageClassification.from_pretrained(backbone_path("swin"))
    processor = AutoImageProcessor.from_pretrained(backbone_path("swin"))   # no torchvision needed

Here: what a shipped backbone is (:data:`BACKBONES`, :func:`backbone_path`, the input transform
:data:`IMAGE_SIZE` / :data:`IMAGE_MEAN` / :data:`IMAGE_STD`, :func:`backbone_config`, :func:`build_backbone`,
:func:`build_image_processor`, the Fashion-MNIST label maps). :func:`mona_peft.backbones.pretraining.pretrain`
(command line: ``scripts/pretrain_backbone.py``) rebuilds the checkpoints from the data that
:mod:`mona_peft.backbones.fashion_mnist` reads; each folder's ``training_log.json`` records the exact command, seed,
hardware and learning curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

if TYPE_CHECKING:
    from transformers import ViTImageProcessorPil

__all__ = [
    "BACKBONES",
    "IMAGE_MEAN",
    "IMAGE_SIZE",
    "IMAGE_STD",
    "backbone_config",
    "backbone_path",
    "build_backbone",
    "build_image_processor",
    "checkpoint_path",
    "portable_checkpoint",
    "shipped_backbone_name",
]

PACKAGE_DIR = Path(__file__).resolve().parent

#: Input resolution of the shipped backbones (Fashion-MNIST's 28x28 is resized to this).
IMAGE_SIZE = 32
#: Pixel normalisation of the shipped backbones: ``(x / 255 - 0.5) / 0.5``, i.e. [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

#: Shipped checkpoints: name -> folder under ``mona_peft/backbones/``.
BACKBONES = {"swin": "swin-fmnist", "vit": "vit-fmnist"}
#: The classes of Fashion-MNIST (:mod:`.fashion_mnist`), the labels of every shipped backbone.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def backbone_path(name: str) -> Path:
    """Folder of the shipped checkpoint ``name`` (``"swin"`` or ``"vit"``), for ``from_pretrained``."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; shipped backbones: {sorted(BACKBONES)}")
    return PACKAGE_DIR / BACKBONES[name]


def shipped_backbone_name(checkpoint: str | Path) -> str | None:
    """The name of the shipped backbone ``checkpoint`` is (its folder, or ``mona_peft:<name>``), else None."""
    text = str(checkpoint)
    if text.startswith("mona_peft:") and text.removeprefix("mona_peft:") in BACKBONES:
        return text.removeprefix("mona_peft:")
    if Path(text).is_dir():
        return next((name for name in BACKBONES if Path(text).resolve() == backbone_path(name).resolve()), None)
    return None


def portable_checkpoint(checkpoint: str | Path) -> str:
    """``mona_peft:<name>`` for a backbone shipped with the package (its path differs between installs), else the
    checkpoint as given; :func:`checkpoint_path` turns it back into a path."""
    name = shipped_backbone_name(checkpoint)
    return f"mona_peft:{name}" if name else str(checkpoint)


def checkpoint_path(checkpoint: str) -> str:
    """The path or Hub id of a checkpoint recorded by :func:`portable_checkpoint`."""
    name = shipped_backbone_name(checkpoint) if checkpoint.startswith("mona_peft:") else None
    return str(backbone_path(name)) if name else checkpoint


# ------------------------------------------------------------------------------------------- models


def _label_maps() -> dict[str, dict]:
    """``id2label`` / ``label2id`` of the Fashion-MNIST classes, the labels of every shipped backbone."""
    id2label = dict(enumerate(FASHION_MNIST_CLASSES))
    return {"id2label": id2label, "label2id": {label: index for index, label in id2label.items()}}


def backbone_config(arch: str) -> PretrainedConfig:
    """The config of the shipped backbone ``arch`` (``"swin"`` or ``"vit"``), with Fashion-MNIST labels.

    * ``swin``: patch 2 (16x16 tokens), window 4, embed dim 48, depths (2, 2, 2), heads (3, 6, 12):
      stages at 16x16/48, 8x8/96 and 4x4/192; about 1.27M parameters.
    * ``vit``: patch 4 (8x8 tokens + CLS), hidden 128, 6 layers, 4 heads, MLP 512; about 1.21M parameters.
    """
    # Every shipped backbone reads 32x32 RGB images and predicts the Fashion-MNIST classes.
    shared = {"image_size": IMAGE_SIZE, "num_channels": 3, **_label_maps()}
    if arch == "swin":
        return SwinConfig(
            patch_size=2,
            embed_dim=48,
            depths=[2, 2, 2],
            num_heads=[3, 6, 12],
            window_size=4,
            mlp_ratio=4.0,
            drop_path_rate=0.1,
            **shared,
        )
    if arch == "vit":
        return ViTConfig(
            patch_size=4,
            hidden_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **shared,
        )
    raise KeyError(f"unknown architecture {arch!r}; choose from {sorted(BACKBONES)}")


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "swin": SwinForImageClassification,
    "vit": ViTForImageClassification,
}


def build_backbone(arch: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised (``torch.manual_seed(seed)``) classifier with :func:`backbone_config`."""
    config = backbone_config(arch)
    torch.manual_seed(seed)
    return _MODEL_CLASSES[arch](config)


def build_image_processor() -> ViTImageProcessorPil:
    """The image processor saved next to each checkpoint: PIL-based, so it needs no torchvision.

    32x32 bilinear resize, rescale by 1/255, normalise with mean = std = 0.5, grayscale converted to RGB.
    ``AutoImageProcessor.from_pretrained`` on the saved folder returns the PIL-backed processor when
    torchvision is absent and the equivalent torchvision one when it is installed.
    """
    from transformers import ViTImageProcessorPil
    from transformers.image_utils import PILImageResampling

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )
