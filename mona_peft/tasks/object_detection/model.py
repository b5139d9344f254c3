"""DETR-family detectors around a pretrained Swin checkpoint, and loading a detection adapter back.

A pretrained Swin has no detection head, so a run builds the detector (RT-DETR by default; Conditional DETR or DETR on
request) from the backbone's config, copies the backbone's pretrained weights into it, and trains the
fresh encoder, decoder and heads with the method (they are the adapter's ``modules_to_save``). The run saves the
detector's config beside the adapter (``detection_config.json``), so the adapter loads anywhere in a few lines::

    import mona_peft
    from mona_peft.tasks.object_detection import load_detection_base
    from peft import PeftModel

    base = load_detection_base("user/swin-mona-coco")  # the detector + the pretrained backbone it was trained on
    model = PeftModel.from_pretrained(base, "user/swin-mona-coco")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import transformers
from torch import nn
from transformers import AutoModelForObjectDetection, PretrainedConfig

from ..task_models import (
    backbone_features_config,
    build_base_model,
    feature_channels,
    feature_strides,
    head_config,
    load_base_model,
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


def _encoder_decoder(size: DetectorSize) -> dict:
    """The depths, widths and queries of the encoder and decoder, by the argument names the DETR family shares."""
    return dict(
        encoder_layers=size.encoder_layers,
        decoder_layers=size.decoder_layers,
        encoder_ffn_dim=size.ffn_dim,
        decoder_ffn_dim=size.ffn_dim,
        encoder_attention_heads=size.attention_heads,
        decoder_attention_heads=size.attention_heads,
        num_queries=size.num_queries,
    )


def _detr_config(config_class: str):
    def build(backbone: PretrainedConfig, size: DetectorSize) -> dict:
        return dict(
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            d_model=size.d_model,
            **_encoder_decoder(size),
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
            **_encoder_decoder(size),
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
    return head_config(
        getattr(transformers, config_class),
        backbone,
        backbone_config,
        labels,
        **arguments(backbone_config, size or DetectorSize()),
    )


def build_detector(detector: str, backbone: str, labels: list[str], size: DetectorSize | None = None) -> nn.Module:
    """A ``detector`` with fresh encoder, decoder and heads for ``labels`` around the pretrained ``backbone``."""
    config = detector_config(detector, backbone, labels, size)
    return build_base_model(AutoModelForObjectDetection.from_config, config, backbone)


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
