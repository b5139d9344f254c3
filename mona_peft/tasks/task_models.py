"""Task models around a pretrained backbone checkpoint: the parts segmentation and detection share.

A pretrained Swin has no segmentation or detection head, so a run builds the task model (UperNet, a DETR-family
detector) from the backbone's config, copies the backbone's pretrained weights into it, and trains fresh heads with
the method. The task model's config is saved beside the adapter with the backbone checkpoint it needs, so the base
model can be rebuilt anywhere (:func:`save_base_config`, :func:`load_base_model`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, EomtForUniversalSegmentation, PretrainedConfig

from ..backbones import checkpoint_path, portable_checkpoint
from ..tuners.architectures import resolve_architecture


def feature_channels(config: PretrainedConfig) -> list[int]:
    """Channels of each feature map a Swin-like, ConvNeXt or DINOv2 backbone config returns (its ``out_features``)."""
    if config.model_type.startswith("dinov2"):
        return [config.hidden_size] * len(config.out_features)
    widths = getattr(config, "hidden_sizes", None) or [config.embed_dim * 2**i for i in range(len(config.depths))]
    return widths[-len(config.out_features) :]


def feature_strides(config: PretrainedConfig) -> list[int]:
    """Pixels per feature of each feature map of a hierarchical (Swin-like) backbone config."""
    strides = [config.patch_size * 2**i for i in range(len(config.depths))]
    return strides[-len(config.out_features) :]


def backbone_features_config(
    backbone: str, allowed: tuple[str, ...], levels: int | None = None, task_words: str = "this model"
) -> PretrainedConfig:
    """The config of the checkpoint ``backbone`` returning its last ``levels`` stages (all when None), without labels.

    DINOv2 returns four evenly spaced blocks instead of stages. Raises ``ValueError`` naming what ``task_words``
    takes for any other model type.
    """
    config = copy.deepcopy(AutoConfig.from_pretrained(checkpoint_path(backbone)))
    if config.model_type not in allowed:
        raise ValueError(
            f"{backbone} is a {config.model_type!r} checkpoint; {task_words} takes these backbones: "
            f"{', '.join(allowed)}."
        )
    stages = config.stage_names[1:]
    if config.model_type.startswith("dinov2"):
        step = max(1, len(stages) // 4)
        stages = stages[step - 1 :: step][-4:]
    if levels is not None:
        stages = stages[-levels:]
    config.set_output_features_output_indices(out_features=stages, out_indices=None)
    config.id2label, config.label2id = {}, {}
    return config


def label_maps(labels: list[str]) -> dict[str, Any]:
    """``id2label`` and ``label2id`` of a config, from the class names in id order."""
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


#: Tensors of a pretrained model that a backbone may lack: the final norm and pooler (Swin v2's backbone has neither;
#: it normalises each stage it returns instead; DINOv3 ConvNeXt's final norm is `layer_norm`).
_ONLY_AFTER_THE_LAST_BLOCK = ("layernorm.", "layer_norm.", "pooler.")


def load_pretrained_backbone(model: nn.Module, backbone: str) -> None:
    """Copy the weights of the checkpoint ``backbone`` into the matching sub-module of ``model``'s backbone (EoMT:
    into the model itself, :func:`load_plain_vit`).

    Every tensor must land, except a final norm or pooler the backbone does not have. Raises ``ValueError`` naming
    the checkpoint when no sub-module fits.
    """
    if isinstance(model, EomtForUniversalSegmentation):
        load_plain_vit(model, backbone)
        return
    pretrained = AutoModel.from_pretrained(checkpoint_path(backbone)).state_dict()
    for module in model.modules():
        own = module.state_dict()
        landing = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
        left_out = set(pretrained) - set(landing)
        if landing and all(key.startswith(_ONLY_AFTER_THE_LAST_BLOCK) for key in left_out):
            module.load_state_dict(landing, strict=False)
            return
    raise ValueError(f"No part of {type(model).__name__} has the shapes of the weights in {backbone}.")


#: EoMT's parts that do not come from the ViT: the heads (trained with every method), and its loss's and mask
#: annealing's buffers.
EOMT_FRESH = ("query.", "upscale_block.", "mask_head.", "class_predictor.", "criterion.", "attn_mask_probs")


#: A plain ViT's block names and EoMT's (the blocks' prefix aside).
_EOMT_NAMES = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2.", "attention.o_proj.": "attention.out_proj."}


def load_plain_vit(model: EomtForUniversalSegmentation, backbone: str) -> None:
    """Copy the plain ViT checkpoint ``backbone`` into EoMT's encoder, which computes what the ViT computes.

    The ViT adds a position to its CLS token and EoMT does not: EoMT's CLS token is the ViT's plus that position.
    The patch positions are resized (bicubic) when EoMT's grid is not the checkpoint's. Every tensor of EoMT outside
    its fresh heads must come from the checkpoint (a ViT without LayerScale keeps EoMT's ones, a ViT without query,
    key and value biases gets zeros); ``ValueError`` names any other.
    """
    state = {}
    for key, value in AutoModel.from_pretrained(checkpoint_path(backbone)).state_dict().items():
        key = re.sub(r"^(?:encoder\.)?layers?\.(\d+)\.", r"layers.\1.", key)
        state[next((key.replace(a, b) for a, b in _EOMT_NAMES.items() if a in key), key)] = value
    positions = state.pop("embeddings.position_embeddings")
    state["embeddings.cls_token"] = state["embeddings.cls_token"] + positions[:, :1]
    state["embeddings.position_embeddings.weight"] = _resized_positions(positions[0, 1:], model.grid_size)
    own = model.state_dict()
    for key in own:
        if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) and key not in state:
            state[key] = torch.zeros_like(own[key])
    fresh = [k for k in own if k.startswith(EOMT_FRESH) or "layer_scale" in k or not own[k].numel()]
    unfilled = [k for k in own if k not in state and k not in fresh]
    if unfilled:
        raise ValueError(f"{backbone} has no weights for EoMT's {', '.join(unfilled[:5])}: it is not a plain ViT.")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _resized_positions(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A square grid's position table ``(cells, channels)`` resized to ``grid`` (bicubic), row-major."""
    side = int(len(positions) ** 0.5)
    if (side, side) == tuple(grid):
        return positions
    square = positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=tuple(grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)


def head_config(
    config_class: Callable[..., PretrainedConfig],
    backbone: str,
    backbone_config: PretrainedConfig,
    labels: list[str],
    **arguments: Any,
) -> PretrainedConfig:
    """A ``config_class`` config with the task model's ``arguments``, around ``backbone_config`` (of the checkpoint
    ``backbone``, recorded so that :func:`load_base_model` loads its weights again), predicting ``labels``."""
    return config_class(
        backbone_config=backbone_config,
        **arguments,
        **label_maps(labels),
        backbone_checkpoint=portable_checkpoint(backbone),
    )


def build_base_model(
    build: Callable[[PretrainedConfig], nn.Module], config: PretrainedConfig, backbone: str
) -> nn.Module:
    """``build(config)`` with the pretrained weights of the checkpoint ``backbone`` copied into its backbone.

    Fails early, naming what is supported, for a backbone no method can adapt.
    """
    model = build(config)
    load_pretrained_backbone(model, backbone)
    resolve_architecture(model)
    return model


def save_base_config(model: nn.Module, folder: str | Path, file_name: str) -> Path:
    """Write the config :func:`load_base_model` rebuilds ``model`` from (its heads come from the adapter)."""
    path = Path(folder) / file_name
    path.write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    return path


def load_base_model(
    folder_or_repo: str | Path, file_name: str, build: Callable[[PretrainedConfig], nn.Module], what: str
) -> nn.Module:
    """The model an adapter was trained on: ``build(config)`` of the config ``file_name`` of a folder or Hub
    repository, with the pretrained backbone weights of the checkpoint recorded there (``backbone_checkpoint``)."""
    folder = Path(folder_or_repo)
    if folder.is_dir():
        path = folder / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {file_name}: it is not {what}.")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(folder_or_repo), file_name))
    values = json.loads(path.read_text())
    config = CONFIG_MAPPING[values["model_type"]].from_dict(values)
    model = build(config)
    load_pretrained_backbone(model, config.backbone_checkpoint)
    return model
