"""UperNet around a pretrained Swin / Swin v2 / DINOv2 checkpoint, and loading a segmentation adapter back.

Pretrained backbones come without a segmentation head, so a run builds ``UperNetForSemanticSegmentation`` from the
backbone's config, copies the backbone's pretrained weights into it, and trains fresh decode and auxiliary heads with
the method (they are the adapter's ``modules_to_save``). The run saves the UperNet's config beside the adapter
(``segmentation_config.json``), so the adapter loads anywhere in a few lines::

    import mona_peft
    from mona_peft.segmentation import load_segmentation_base
    from peft import PeftModel

    base = load_segmentation_base("user/swin-mona-ade20k")  # UperNet + the pretrained backbone it was trained on
    model = PeftModel.from_pretrained(base, "user/swin-mona-ade20k")
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModel, UperNetConfig, UperNetForSemanticSegmentation

from .architectures import resolve_architecture

#: The UperNet config saved beside a segmentation adapter, with the backbone checkpoint it needs.
SEGMENTATION_CONFIG_FILE = "segmentation_config.json"
#: Backbones UperNet takes in transformers.
UPERNET_BACKBONES = ("swin", "swinv2", "dinov2", "dinov2_with_registers")


def upernet_config(backbone: str, labels: list[str], hidden_size: int = 512) -> UperNetConfig:
    """An UperNet config around the backbone checkpoint ``backbone`` (Hub id or path), predicting ``labels``.

    The backbone feeds every stage (Swin) or four evenly spaced blocks (DINOv2) to the decode head; the auxiliary
    head reads the third of them, as in the paper's recipe.
    """
    config = copy.deepcopy(AutoConfig.from_pretrained(_checkpoint_path(backbone)))
    if config.model_type not in UPERNET_BACKBONES:
        raise ValueError(
            f"{backbone} is a {config.model_type!r} checkpoint; UperNet takes these backbones: "
            f"{', '.join(UPERNET_BACKBONES)} (or pass an UperNet checkpoint)."
        )
    stages = config.stage_names[1:]
    if config.model_type.startswith("dinov2"):
        step = max(1, len(stages) // 4)
        stages = stages[step - 1 :: step][-4:]
    config.set_output_features_output_indices(out_features=stages, out_indices=None)
    config.id2label, config.label2id = {}, {}
    channels = _feature_channels(config)
    return UperNetConfig(
        backbone_config=config,
        hidden_size=hidden_size,
        # The auxiliary FCN head reads the third feature map; a backbone with fewer has none.
        use_auxiliary_head=len(channels) >= 3,
        auxiliary_in_channels=channels[min(2, len(channels) - 1)],
        auxiliary_channels=max(hidden_size // 2, 16),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        backbone_checkpoint=_portable_checkpoint(backbone),
    )


def _portable_checkpoint(backbone: str) -> str:
    """``mona_peft:<name>`` for a backbone shipped with the package (its path differs between installs)."""
    from .backbones import BACKBONES, backbone_path

    for name in BACKBONES:
        if Path(backbone).resolve() == backbone_path(name).resolve():
            return f"mona_peft:{name}"
    return str(backbone)


def _checkpoint_path(checkpoint: str) -> str:
    from .backbones import backbone_path

    return (
        str(backbone_path(checkpoint.removeprefix("mona_peft:"))) if checkpoint.startswith("mona_peft:") else checkpoint
    )


def _feature_channels(config) -> list[int]:
    if config.model_type.startswith("dinov2"):
        return [config.hidden_size] * len(config.out_features)
    return [config.embed_dim * 2**i for i in range(len(config.depths))][-len(config.out_features) :]


#: Tensors of a pretrained model that a backbone may lack: the final norm and pooler (Swin v2's backbone has neither;
#: it normalises each stage it returns instead).
_ONLY_AFTER_THE_LAST_BLOCK = ("layernorm.", "pooler.")


def load_pretrained_backbone(model: nn.Module, backbone: str) -> None:
    """Copy the weights of the checkpoint ``backbone`` into the matching sub-module of ``model``'s backbone.

    Every tensor must land, except a final norm or pooler the backbone does not have. Raises ``ValueError`` naming
    the checkpoint when no sub-module fits.
    """
    pretrained = AutoModel.from_pretrained(_checkpoint_path(backbone)).state_dict()
    for module in model.modules():
        own = module.state_dict()
        landing = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
        left_out = set(pretrained) - set(landing)
        if landing and all(key.startswith(_ONLY_AFTER_THE_LAST_BLOCK) for key in left_out):
            module.load_state_dict(landing, strict=False)
            return
    raise ValueError(f"No part of {type(model).__name__} has the shapes of the weights in {backbone}.")


def build_upernet(backbone: str, labels: list[str], hidden_size: int = 512) -> UperNetForSemanticSegmentation:
    """UperNet with fresh heads for ``labels`` around the pretrained ``backbone`` checkpoint."""
    model = UperNetForSemanticSegmentation(upernet_config(backbone, labels, hidden_size))
    load_pretrained_backbone(model.backbone, backbone)
    resolve_architecture(model)  # fails early, naming what is supported, for a backbone no method can adapt
    return model


def save_segmentation_config(model: nn.Module, folder: str | Path) -> Path:
    """Write the config ``load_segmentation_base`` rebuilds ``model`` from (its heads come from the adapter)."""
    path = Path(folder) / SEGMENTATION_CONFIG_FILE
    path.write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    return path


def load_segmentation_base(folder_or_repo: str | Path) -> UperNetForSemanticSegmentation:
    """The model a segmentation adapter was trained on: its UperNet (from ``segmentation_config.json``) with the
    pretrained backbone weights of the checkpoint recorded there. The heads are the adapter's; load it next with
    ``PeftModel.from_pretrained``."""
    folder = Path(folder_or_repo)
    if folder.is_dir():
        path = folder / SEGMENTATION_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {SEGMENTATION_CONFIG_FILE}: it is not a segmentation adapter.")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(folder_or_repo), SEGMENTATION_CONFIG_FILE))
    config = UperNetConfig.from_dict(json.loads(path.read_text()))
    model = UperNetForSemanticSegmentation(config)
    load_pretrained_backbone(model.backbone, config.backbone_checkpoint)
    return model
