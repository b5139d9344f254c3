"""Image classifiers for backbones that transformers ships without one, registered with
``AutoModelForImageClassification`` when ``mona_peft`` is imported (so the classification script, the cards' snippets
and ``pipeline("image-classification")`` load them like any other).

- :class:`DINOv3ViTForImageClassification`: DINOv3's linear-probe head, one ``Linear`` over the CLS token concatenated
  with the mean of the patch tokens (the register tokens are left out), as ``Dinov2ForImageClassification`` does.
- :class:`DINOv3ConvNextForImageClassification`: one ``Linear`` over the model's pooled output (the normalised global
  average of the last stage), as ``ConvNextForImageClassification`` does.

Example:

    ```py
    >>> import mona_peft
    >>> from transformers import AutoModelForImageClassification, DINOv3ViTConfig
    >>> config = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...                          image_size=32, patch_size=8, num_labels=3)
    >>> type(AutoModelForImageClassification.from_config(config)).__name__
    'DINOv3ViTForImageClassification'
    ```
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    DINOv3ConvNextConfig,
    DINOv3ConvNextModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
from transformers.models.dinov3_convnext.modeling_dinov3_convnext import DINOv3ConvNextPreTrainedModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTPreTrainedModel


class _LinearHeadClassifier:
    """A backbone, ``model`` (the DINOv3 models' ``base_model_prefix``: ``from_pretrained`` of a backbone checkpoint
    loads it and creates a fresh head), with one ``Linear`` head, ``classifier``, on the features :meth:`features`
    picks; ``labels`` give the loss."""

    def _build(self, config: Any, backbone: nn.Module, width: int) -> None:
        self.num_labels = config.num_labels
        self.model = backbone
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def features(self, outputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> ImageClassifierOutput:
        outputs = self.model(pixel_values, **kwargs)
        logits = self.classifier(self.features(outputs))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=getattr(outputs, "attentions", None),
        )


class DINOv3ViTForImageClassification(_LinearHeadClassifier, DINOv3ViTPreTrainedModel):
    """A DINOv3 ViT with a linear head on ``[CLS, mean(patch tokens)]``."""

    def __init__(self, config: DINOv3ViTConfig) -> None:
        super().__init__(config)
        self._build(config, DINOv3ViTModel(config), 2 * config.hidden_size)

    def features(self, outputs: Any) -> torch.Tensor:
        tokens = outputs.last_hidden_state
        patches = tokens[:, 1 + self.config.num_register_tokens :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)


class DINOv3ConvNextForImageClassification(_LinearHeadClassifier, DINOv3ConvNextPreTrainedModel):
    """A DINOv3 ConvNeXt with a linear head on its pooled output."""

    def __init__(self, config: DINOv3ConvNextConfig) -> None:
        super().__init__(config)
        self._build(config, DINOv3ConvNextModel(config), config.hidden_sizes[-1])

    def features(self, outputs: Any) -> torch.Tensor:
        return outputs.pooler_output


def _register(config_class: type, model_class: type) -> None:
    """Make ``model_class`` the ``AutoModelForImageClassification`` of ``config_class``, unless transformers has one."""
    if config_class not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        # exist_ok: without it transformers skips (silently) a register call for one of its own config classes
        AutoModelForImageClassification.register(config_class, model_class, exist_ok=True)


_register(DINOv3ViTConfig, DINOv3ViTForImageClassification)
_register(DINOv3ConvNextConfig, DINOv3ConvNextForImageClassification)

__all__ = ["DINOv3ConvNextForImageClassification", "DINOv3ViTForImageClassification"]
