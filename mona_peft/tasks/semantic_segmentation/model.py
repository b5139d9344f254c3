"""UperNet around a pretrained Swin / Swin v2 / DINOv2 / ConvNeXt checkpoint, and loading a segmentation adapter back.

Pretrained backbones come without a segmentation head, so a run builds ``UperNetForSemanticSegmentation`` from the
backbone's config, copies the backbone's pretrained weights into it, and trains fresh decode and auxiliary heads with
the method (they are the adapter's ``modules_to_save``). The run saves the UperNet's config beside the adapter
(``segmentation_config.json``), so the adapter loads anywhere in a few lines::

    import mona_peft
    from mona_peft.tasks.semantic_segmentation import load_segmentation_base
    from peft import PeftModel

    base = load_segmentation_base("user/swin-mona-ade20k")  # UperNet + the pretrained backbone it was trained on
    model = PeftModel.from_pretrained(base, "user/swin-mona-ade20k")
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from ..task_models import (
    backbone_features_config,
    build_base_model,
    feature_channels,
    head_config,
    load_base_model,
    save_base_config,
)

#: The UperNet config saved beside a segmentation adapter, with the backbone checkpoint it needs.
SEGMENTATION_CONFIG_FILE = "segmentation_config.json"
#: Backbones UperNet takes in transformers.
UPERNET_BACKBONES = (
    "swin", "swinv2", "dinov2", "dinov2_with_registers", "convnext", "convnextv2", "dinov3_convnext",
)  # fmt: skip


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


def save_segmentation_config(model: nn.Module, folder: str | Path) -> Path:
    """Write the config ``load_segmentation_base`` rebuilds ``model`` from (its heads come from the adapter)."""
    return save_base_config(model, folder, SEGMENTATION_CONFIG_FILE)


def load_segmentation_base(folder_or_repo: str | Path) -> UperNetForSemanticSegmentation:
    """The model a segmentation adapter was trained on: its UperNet (from ``segmentation_config.json``) with the
    pretrained backbone weights of the checkpoint recorded there. The heads are the adapter's; load it next with
    ``PeftModel.from_pretrained``."""
    return load_base_model(
        folder_or_repo, SEGMENTATION_CONFIG_FILE, UperNetForSemanticSegmentation, "a segmentation adapter"
    )
