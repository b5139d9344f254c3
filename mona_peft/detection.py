"""DETR-family detectors around a pretrained Swin checkpoint, and loading a detection adapter back.

A pretrained Swin has no detection head, so a run builds the detector (RT-DETR by default; Conditional DETR or DETR on
request) from the backbone's config, copies the backbone's pretrained weights into it, and trains the
fresh encoder, decoder and heads with the method (they are the adapter's ``modules_to_save``). The run saves the
detector's config beside the adapter (``detection_config.json``), so the adapter loads anywhere in a few lines::

    import mona_peft
    from mona_peft.detection import load_detection_base
    from peft import PeftModel

    base = load_detection_base("user/swin-mona-coco")  # the detector + the pretrained backbone it was trained on
    model = PeftModel.from_pretrained(base, "user/swin-mona-coco")

Instance segmentation works the same way with Mask2Former (``build_mask2former``; the config file is
``instance_segmentation_config.json`` and ``load_instance_segmentation_base`` rebuilds the base model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import transformers
from torch import nn
from transformers import AutoModelForObjectDetection, PretrainedConfig

from .architectures import resolve_architecture
from .task_models import (
    backbone_features_config,
    feature_channels,
    feature_strides,
    label_maps,
    load_base_model,
    load_pretrained_backbone,
    portable_checkpoint,
    save_base_config,
)

#: The detector config saved beside a detection adapter, with the backbone checkpoint it needs.
DETECTION_CONFIG_FILE = "detection_config.json"
#: Backbones the detectors take here: hierarchical ones (RT-DETR's and D-FINE's feature pyramid doubles the stride
#: from level to level).
DETECTION_BACKBONES = ("swin", "swinv2")


@dataclass(frozen=True)
class DetectorSize:
    """The widths and depths of the parts a run trains from scratch (transformers' defaults are for COCO at 640)."""

    d_model: int = 256
    encoder_layers: int = 1
    decoder_layers: int = 6
    ffn_dim: int = 1024
    attention_heads: int = 8
    num_queries: int = 300
    #: RT-DETR's denoising queries (its default 100 costs 4x a step at 20 queries on CPU: the loss of every group).
    num_denoising: int = 100


def _detr_config(config_class: str):
    def build(backbone: PretrainedConfig, size: DetectorSize) -> dict:
        return dict(
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            d_model=size.d_model,
            encoder_layers=size.encoder_layers,
            decoder_layers=size.decoder_layers,
            encoder_ffn_dim=size.ffn_dim,
            decoder_ffn_dim=size.ffn_dim,
            encoder_attention_heads=size.attention_heads,
            decoder_attention_heads=size.attention_heads,
            num_queries=size.num_queries,
            # A loss after every decoder layer, as DETR and Conditional DETR were trained (transformers' default: off).
            auxiliary_loss=True,
        )

    return config_class, build


def _rt_detr_config(config_class: str):
    def build(backbone: PretrainedConfig, size: DetectorSize) -> dict:
        levels = len(backbone.out_features)
        return dict(
            d_model=size.d_model,
            encoder_hidden_dim=size.d_model,
            encoder_in_channels=feature_channels(backbone),
            feat_strides=feature_strides(backbone),
            decoder_in_channels=[size.d_model] * levels,
            num_feature_levels=levels,
            encode_proj_layers=[levels - 1],
            encoder_layers=size.encoder_layers,
            decoder_layers=size.decoder_layers,
            encoder_ffn_dim=size.ffn_dim,
            decoder_ffn_dim=size.ffn_dim,
            encoder_attention_heads=size.attention_heads,
            decoder_attention_heads=size.attention_heads,
            num_queries=size.num_queries,
            num_denoising=size.num_denoising,
            anchor_image_size=None,  # anchors from each input's own size
        )

    return config_class, build


#: ``--detector`` -> (config class name in transformers, the config arguments for a backbone and a size).
#: Not here: D-FINE, Deformable DETR and DAB-DETR tie their box heads across decoder layers (``_tied_weights_keys``),
#: which PEFT 0.21 cannot wrap (``get_input_embeddings`` is not handled for them) and ``modules_to_save`` would copy
#: apart; tests/test_detection_models.py records the errors.
DETECTORS = {
    "rt_detr": _rt_detr_config("RTDetrConfig"),
    "conditional_detr": _detr_config("ConditionalDetrConfig"),
    "detr": _detr_config("DetrConfig"),
}


def detector_config(
    detector: str, backbone: str, labels: list[str], size: DetectorSize | None = None
) -> PretrainedConfig:
    """The config of a ``detector`` (a key of ``DETECTORS``) around the backbone checkpoint ``backbone`` (Hub id or
    path), predicting ``labels``. The backbone feeds its last three stages (DETR and Conditional DETR read the last).
    """
    if detector not in DETECTORS:
        raise ValueError(f"Unknown detector {detector!r}; available: {', '.join(DETECTORS)}.")
    config_class, arguments = DETECTORS[detector]
    backbone_config = backbone_features_config(
        backbone, DETECTION_BACKBONES, levels=3, task_words=f"the {detector} detector here"
    )
    return getattr(transformers, config_class)(
        backbone_config=backbone_config,
        **arguments(backbone_config, size or DetectorSize()),
        **label_maps(labels),
        backbone_checkpoint=portable_checkpoint(backbone),
    )


def build_detector(detector: str, backbone: str, labels: list[str], size: DetectorSize | None = None) -> nn.Module:
    """A ``detector`` with fresh encoder, decoder and heads for ``labels`` around the pretrained ``backbone``."""
    model = AutoModelForObjectDetection.from_config(detector_config(detector, backbone, labels, size))
    load_pretrained_backbone(model, backbone)
    resolve_architecture(model)  # fails early, naming what is supported, for a backbone no method can adapt
    return model


def save_detection_config(model: nn.Module, folder: str | Path) -> Path:
    """Write the config ``load_detection_base`` rebuilds ``model`` from (its heads come from the adapter)."""
    return save_base_config(model, folder, DETECTION_CONFIG_FILE)


def load_detection_base(folder_or_repo: str | Path) -> nn.Module:
    """The detector a detection adapter was trained on (from ``detection_config.json``), with the pretrained backbone
    weights of the checkpoint recorded there. The heads are the adapter's; load it next with
    ``PeftModel.from_pretrained``."""
    return load_base_model(
        folder_or_repo, DETECTION_CONFIG_FILE, AutoModelForObjectDetection.from_config, "a detection adapter"
    )


# ------------------------------------------------------------------------------------ instance segmentation

#: The Mask2Former config saved beside an instance-segmentation adapter, with the backbone checkpoint it needs.
INSTANCE_SEGMENTATION_CONFIG_FILE = "instance_segmentation_config.json"


@dataclass(frozen=True)
class Mask2FormerSize:
    """The widths and depths of the Mask2Former parts a run trains from scratch (defaults: transformers', those of
    the COCO checkpoints).

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
    return transformers.Mask2FormerConfig(
        backbone_config=backbone_config,
        feature_size=size.hidden_dim,
        mask_feature_size=size.hidden_dim,
        hidden_dim=size.hidden_dim,
        encoder_layers=size.encoder_layers,
        decoder_layers=size.decoder_layers,
        encoder_feedforward_dim=size.encoder_feedforward_dim,
        dim_feedforward=size.dim_feedforward,
        num_attention_heads=size.num_attention_heads,
        num_queries=size.num_queries,
        train_num_points=size.train_num_points,
        feature_strides=strides,
        # The FPN levels reach down to this stride: the first stage's, so that no stage is left out.
        common_stride=strides[0],
        **label_maps(labels),
        backbone_checkpoint=portable_checkpoint(backbone),
    )


def build_mask2former(
    backbone: str, labels: list[str], size: Mask2FormerSize | None = None
) -> transformers.Mask2FormerForUniversalSegmentation:
    """Mask2Former with a fresh pixel decoder, transformer decoder and heads for ``labels`` around the pretrained
    ``backbone`` checkpoint."""
    model = transformers.Mask2FormerForUniversalSegmentation(mask2former_config(backbone, labels, size))
    load_pretrained_backbone(model, backbone)
    resolve_architecture(model)  # fails early, naming what is supported, for a backbone no method can adapt
    return model


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
