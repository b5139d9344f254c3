"""The segmentation models built around a pretrained backbone, and loading a segmentation adapter back.

- **UperNet** around a Swin / Swin v2 / DINOv2 / ConvNeXt checkpoint: a run builds ``UperNetForSemanticSegmentation``
  from the backbone's config, copies the backbone's pretrained weights into it, and trains fresh decode and auxiliary
  heads with the method (they are the adapter's ``modules_to_save``).
- **EoMT** around a plain ViT checkpoint (ViT, DINOv2, DINOv2 with registers): EoMT's encoder *is* the ViT, so its
  blocks take the ViT's weights (:func:`load_plain_vit`) and the queries, the upscaling blocks, the mask head and the
  class predictor are fresh heads. EoMT classifies masks: a pixel's class scores are the queries' class
  probabilities weighted by their mask probabilities there (:func:`semantic_logits`).

The run saves the model's config beside the adapter (``segmentation_config.json``), so the adapter loads anywhere in
a few lines::

    import mona_peft
    from mona_peft.tasks.semantic_segmentation import load_segmentation_base
    from peft import PeftModel

    base = load_segmentation_base("user/swin-mona-ade20k")  # UperNet + the pretrained backbone it was trained on
    model = PeftModel.from_pretrained(base, "user/swin-mona-ade20k")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    EomtConfig,
    EomtForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from ...backbones import checkpoint_path, portable_checkpoint
from ..task_models import (
    backbone_features_config,
    build_base_model,
    feature_channels,
    head_config,
    label_maps,
    load_base_model,
    save_base_config,
)

#: The UperNet config saved beside a segmentation adapter, with the backbone checkpoint it needs.
SEGMENTATION_CONFIG_FILE = "segmentation_config.json"
#: Backbones UperNet takes in transformers.
UPERNET_BACKBONES = (
    "swin", "swinv2", "dinov2", "dinov2_with_registers", "convnext", "convnextv2", "dinov3_convnext",
)  # fmt: skip
#: Plain ViTs the script builds EoMT around.
EOMT_BACKBONES = ("vit", "dinov2", "dinov2_with_registers")


def upernet_config(backbone: str, labels: list[str], hidden_size: int = 512) -> UperNetConfig:
    """An UperNet config around the backbone checkpoint ``backbone`` (Hub id or path), predicting ``labels``.

    The backbone feeds every stage (Swin) or four evenly spaced blocks (DINOv2) to the decode head; the auxiliary
    head reads the third of them, as in the paper's recipe.
    """
    config = backbone_features_config(backbone, UPERNET_BACKBONES, task_words="UperNet")
    channels = feature_channels(config)
    return head_config(
        UperNetConfig,
        backbone,
        config,
        labels,
        hidden_size=hidden_size,
        # The auxiliary FCN head reads the third feature map; a backbone with fewer has none.
        use_auxiliary_head=len(channels) >= 3,
        auxiliary_in_channels=channels[min(2, len(channels) - 1)],
        auxiliary_channels=max(hidden_size // 2, 16),
        num_labels=len(labels),
    )


def build_upernet(backbone: str, labels: list[str], hidden_size: int = 512) -> UperNetForSemanticSegmentation:
    """UperNet with fresh heads for ``labels`` around the pretrained ``backbone`` checkpoint."""
    return build_base_model(UperNetForSemanticSegmentation, upernet_config(backbone, labels, hidden_size), backbone)


def eomt_config(backbone: str, labels: list[str], image_size: int | None = None, num_queries: int = 200) -> EomtConfig:
    """An EoMT config whose encoder is the plain ViT checkpoint ``backbone``, at ``image_size`` (default: the ViT's),
    with ``num_queries`` mask queries predicting ``labels``.

    The queries join the last third of the blocks, at most 4 (the paper's 4 of ViT-L's 24). The masks are not
    annealed: every block that carries the queries keeps its masked attention in training and inference alike.
    """
    vit = AutoConfig.from_pretrained(checkpoint_path(backbone))
    if vit.model_type not in EOMT_BACKBONES:
        raise ValueError(
            f"{backbone} is a {vit.model_type!r} checkpoint; EoMT takes these plain ViTs: {', '.join(EOMT_BACKBONES)}."
        )
    mlp_ratio = getattr(vit, "mlp_ratio", None) or vit.intermediate_size / vit.hidden_size
    if mlp_ratio != int(mlp_ratio):
        raise ValueError(f"{backbone}'s MLP width is {mlp_ratio} times its width; EoMT's MLP takes a whole multiple.")
    return EomtConfig(
        hidden_size=vit.hidden_size,
        num_hidden_layers=vit.num_hidden_layers,
        num_attention_heads=vit.num_attention_heads,
        hidden_act=vit.hidden_act,
        layer_norm_eps=vit.layer_norm_eps,
        mlp_ratio=int(mlp_ratio),
        use_swiglu_ffn=getattr(vit, "use_swiglu_ffn", False),
        layerscale_value=getattr(
            vit, "layerscale_value", 1.0
        ),  # a ViT has no LayerScale: 1 leaves its blocks as they are
        image_size=image_size or vit.image_size,
        patch_size=vit.patch_size,
        num_channels=vit.num_channels,
        num_register_tokens=getattr(vit, "num_register_tokens", 0),
        num_blocks=max(1, min(4, vit.num_hidden_layers // 3)),
        num_queries=num_queries,
        **label_maps(labels),
        backbone_checkpoint=portable_checkpoint(backbone),
    )


def build_eomt(
    backbone: str, labels: list[str], image_size: int | None = None, num_queries: int = 200
) -> EomtForUniversalSegmentation:
    """EoMT with fresh queries and heads for ``labels`` whose encoder is the pretrained plain ViT ``backbone``."""
    return build_base_model(
        EomtForUniversalSegmentation, eomt_config(backbone, labels, image_size, num_queries), backbone
    )


def semantic_logits(outputs: Any) -> torch.Tensor:
    """Per-pixel class scores ``(batch, classes, height, width)`` of a segmentation model's outputs: UperNet's and
    DPT's logits, or, for a mask classifier (EoMT), each query's class probabilities (without "no object")
    weighted by its mask probability, as transformers' EoMT post-processing scores them."""
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    classes = outputs.class_queries_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", classes, outputs.masks_queries_logits.sigmoid())


def mask_targets(labels: torch.Tensor, ignore_index: int) -> dict[str, list[torch.Tensor]]:
    """A mask classifier's targets from per-pixel class maps ``(batch, height, width)``: per image, one binary mask
    per class present (``mask_labels``) and those classes (``class_labels``); ignored pixels are in no mask."""
    masks, classes = [], []
    for label_map in labels:
        present = [c for c in label_map.unique().tolist() if c != ignore_index]
        masks.append(
            torch.stack([label_map == c for c in present]).float()
            if present
            else label_map.new_zeros((0, *label_map.shape), dtype=torch.float)
        )
        classes.append(torch.tensor(present, dtype=torch.long, device=label_map.device))
    return {"mask_labels": masks, "class_labels": classes}


def save_segmentation_config(model: nn.Module, folder: str | Path) -> Path:
    """Write the config ``load_segmentation_base`` rebuilds ``model`` from (its heads come from the adapter)."""
    return save_base_config(model, folder, SEGMENTATION_CONFIG_FILE)


def load_segmentation_base(folder_or_repo: str | Path) -> UperNetForSemanticSegmentation | EomtForUniversalSegmentation:
    """The model a segmentation adapter was trained on: its UperNet or EoMT (from ``segmentation_config.json``) with
    the pretrained backbone weights of the checkpoint recorded there. The heads are the adapter's; load it next with
    ``PeftModel.from_pretrained``."""
    return load_base_model(folder_or_repo, SEGMENTATION_CONFIG_FILE, _segmentation_model, "a segmentation adapter")


def _segmentation_model(config: UperNetConfig | EomtConfig) -> nn.Module:
    return (EomtForUniversalSegmentation if config.model_type == "eomt" else UperNetForSemanticSegmentation)(config)
