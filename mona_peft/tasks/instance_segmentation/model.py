"""Mask2Former around a pretrained Swin checkpoint, and loading an instance-segmentation adapter back.

As for detection (:mod:`mona_peft.tasks.object_detection.model`), a run builds Mask2Former from the backbone's config,
copies the backbone's pretrained weights into it and trains the fresh pixel decoder, transformer decoder and heads with
the method. The run saves the Mask2Former config beside the adapter (``instance_segmentation_config.json``), so the
adapter loads anywhere in a few lines::

    import mona_peft
    from mona_peft.tasks.instance_segmentation import load_instance_segmentation_base
    from peft import PeftModel

    base = load_instance_segmentation_base("user/swin-mona-coco-instances")
    model = PeftModel.from_pretrained(base, "user/swin-mona-coco-instances")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import transformers
from torch import nn

from ..object_detection.model import DETECTION_BACKBONES
from ..task_models import (
    backbone_features_config,
    build_base_model,
    feature_strides,
    head_config,
    load_base_model,
    save_base_config,
)

#: The Mask2Former config saved beside an instance-segmentation adapter, with the backbone checkpoint it needs.
INSTANCE_SEGMENTATION_CONFIG_FILE = "instance_segmentation_config.json"


@dataclass(frozen=True)
class Mask2FormerSize:
    """The widths and depths of the Mask2Former parts a run trains from scratch (defaults: transformers', those of
    the COCO checkpoints). Each field is the ``Mask2FormerConfig`` argument of the same name.

    ``hidden_dim`` is the width of the pixel decoder (``feature_size``, ``mask_feature_size``: a multiple of 32, for
    its GroupNorm) and of the transformer decoder. ``decoder_layers`` counts the query predictions (the first from
    the bare queries), so ``decoder_layers - 1`` masked-attention layers cycle over the three coarsest levels.
    ``train_num_points`` is the points each mask's loss samples (COCO's 112 x 112).
    """

    hidden_dim: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 10
    encoder_feedforward_dim: int = 1024
    dim_feedforward: int = 2048
    num_attention_heads: int = 8
    num_queries: int = 100
    train_num_points: int = 12544


def mask2former_config(
    backbone: str, labels: list[str], size: Mask2FormerSize | None = None
) -> transformers.Mask2FormerConfig:
    """A Mask2Former config around the backbone checkpoint ``backbone`` (Hub id or path), predicting ``labels``.

    Every stage of the backbone feeds the pixel decoder: its deformable encoder reads the three coarsest, and its
    FPN adds the finer ones down to the first stage's stride, at which the masks are predicted (Swin-T: stages 2-4
    in the encoder, stage 1 in the FPN, masks at stride 4; the shipped three-stage Swin: all three in the encoder,
    masks at its stride 2).
    """
    size = size or Mask2FormerSize()
    backbone_config = backbone_features_config(backbone, DETECTION_BACKBONES, task_words="Mask2Former here")
    strides = feature_strides(backbone_config)
    if len(strides) < 3:
        raise ValueError(
            f"{backbone} has {len(strides)} stages; Mask2Former's pixel decoder reads three feature maps, so it needs "
            "a backbone with at least three stages."
        )
    if size.hidden_dim % 32 or size.hidden_dim % size.num_attention_heads:
        raise ValueError(
            f"Mask2Former's width {size.hidden_dim} must be a multiple of 32 (its GroupNorm) and of its "
            f"{size.num_attention_heads} attention heads."
        )
    return head_config(
        transformers.Mask2FormerConfig,
        backbone,
        backbone_config,
        labels,
        feature_size=size.hidden_dim,
        mask_feature_size=size.hidden_dim,
        **asdict(size),
        feature_strides=strides,
        # The FPN levels reach down to this stride: the first stage's, so that no stage is left out.
        common_stride=strides[0],
    )


def build_mask2former(
    backbone: str, labels: list[str], size: Mask2FormerSize | None = None
) -> transformers.Mask2FormerForUniversalSegmentation:
    """Mask2Former with a fresh pixel decoder, transformer decoder and heads for ``labels`` around the pretrained
    ``backbone`` checkpoint."""
    config = mask2former_config(backbone, labels, size)
    return build_base_model(transformers.Mask2FormerForUniversalSegmentation, config, backbone)


def save_instance_segmentation_config(model: nn.Module, folder: str | Path) -> Path:
    """Write the config ``load_instance_segmentation_base`` rebuilds ``model`` from (its heads come from the
    adapter)."""
    return save_base_config(model, folder, INSTANCE_SEGMENTATION_CONFIG_FILE)


def load_instance_segmentation_base(folder_or_repo: str | Path) -> nn.Module:
    """The Mask2Former an instance-segmentation adapter was trained on (from ``instance_segmentation_config.json``),
    with the pretrained backbone weights of the checkpoint recorded there. The pixel decoder, transformer decoder
    and heads are the adapter's; load it next with ``PeftModel.from_pretrained``."""
    return load_base_model(
        folder_or_repo,
        INSTANCE_SEGMENTATION_CONFIG_FILE,
        transformers.AutoModelForUniversalSegmentation.from_config,
        "an instance-segmentation adapter",
    )
