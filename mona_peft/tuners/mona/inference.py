"""Mona frozen for inference: what its fused forward computes from the parameters on every call, computed once."""

from __future__ import annotations

from torch import nn

from .layer import MultiCognitiveFilter, ScaledLayerNorm


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """``model`` (in place, and returned) in eval mode, with every Mona's fused 7x7 depthwise kernel, its ``W + I``
    1x1 matrix and its scaled norm's folded affine computed once, instead of on every forward.

    The outputs equal the eager model's to round-off. The frozen tensors are copies: a later edit of the parameters
    does not reach them (that is the contract of asking for a frozen model), and a training-mode or grad-enabled
    forward raises, saying why. Dropout is off in eval mode. To train again, load the adapter again.

    Example (``model`` adapted with Mona, e.g. by ``get_peft_model(base, MonaConfig())``):

        ```py
        >>> model = mona_peft.prepare_for_inference(model)
        >>> with torch.inference_mode():
        ...     logits = model(pixel_values=pixel_values).logits
        ```
    """
    for module in model.modules():
        if isinstance(module, (MultiCognitiveFilter, ScaledLayerNorm)):
            module.freeze()
    return model.eval()


__all__ = ["prepare_for_inference"]
