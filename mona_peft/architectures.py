"""The one place that knows each supported architecture.

Block-level methods (Mona, and later VPT) need three facts about a backbone that PEFT's
``target_modules`` cannot express: which modules are the transformer blocks, where inside a
block the residual stream continues after the attention residual add, and how the block's
tokens lie on the 2-D patch grid (grid size, number of prefix tokens such as CLS, distillation
or register tokens). Supporting a new architecture means adding one ``ArchitectureSpec`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

GridSource = Literal["input_dimensions", "patch_embedding"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How block-level adapters attach to one transformers architecture.

    Attributes:
        model_type: ``config.model_type`` of the backbone (``"swin"``, ``"vit"``, ...).
        block_class: class name of one transformer block (``"SwinLayer"``).
        block_pattern: regex (PEFT ``target_modules`` syntax) matching the blocks' module names.
        post_attention_input: submodule of the block whose input is the residual stream right after
            the attention residual add (and which starts the MLP branch).
        grid_source: ``"input_dimensions"`` when the block receives its ``(height, width)`` as second
            argument (Swin), ``"patch_embedding"`` when the grid is read off the patch projection's
            output (plain ViTs, where every block sees the same grid).
        patch_projection: name suffix of the patch-embedding convolution (for ``"patch_embedding"``).
        num_prefix_tokens: tokens before the patch tokens (CLS, distillation, registers), from the config.
    """

    model_type: str
    block_class: str
    block_pattern: str
    post_attention_input: str
    grid_source: GridSource
    patch_projection: str = "embeddings.patch_embeddings.projection"
    num_prefix_tokens: Callable[[Any], int] = lambda config: 0


_VIT_BLOCKS = r"(.*\.)?layers?\.\d+"
_SWIN_BLOCKS = r"(.*\.)?layers\.\d+\.blocks\.\d+"

SUPPORTED_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("swin", "SwinLayer", _SWIN_BLOCKS, "layernorm_after", "input_dimensions"),
        # Swin v2 uses post-norm residuals: the stream after the attention add feeds the MLP directly.
        ArchitectureSpec("swinv2", "Swinv2Layer", _SWIN_BLOCKS, "intermediate", "input_dimensions"),
        ArchitectureSpec(
            "vit", "ViTLayer", _VIT_BLOCKS, "layernorm_after", "patch_embedding", num_prefix_tokens=lambda c: 1
        ),
        # DeiT prepends a CLS and a distillation token.
        ArchitectureSpec(
            "deit", "DeiTLayer", _VIT_BLOCKS, "layernorm_after", "patch_embedding", num_prefix_tokens=lambda c: 2
        ),
        ArchitectureSpec(
            "dinov2", "Dinov2Layer", _VIT_BLOCKS, "norm2", "patch_embedding", num_prefix_tokens=lambda c: 1
        ),
        ArchitectureSpec(
            "dinov2_with_registers",
            "Dinov2WithRegistersLayer",
            _VIT_BLOCKS,
            "norm2",
            "patch_embedding",
            num_prefix_tokens=lambda c: 1 + c.num_register_tokens,
        ),
    )
}


@dataclass(frozen=True)
class ResolvedArchitecture:
    """An ``ArchitectureSpec`` bound to one model instance."""

    spec: ArchitectureSpec
    config: Any
    num_prefix_tokens: int
    patch_projection: nn.Module | None


class UnsupportedArchitectureError(ValueError):
    """Raised for a model none of whose sub-models is a supported backbone."""


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values mona_peft can adapt."""
    return sorted(SUPPORTED_ARCHITECTURES)


def resolve_architecture(model: nn.Module) -> ResolvedArchitecture:
    """Find the supported backbone inside ``model``.

    The backbone may be the model itself (``SwinForImageClassification``) or nested in it (the
    ``SwinBackbone`` of an ``UperNetForSemanticSegmentation``): the first sub-model whose
    ``config.model_type`` is supported and which contains that architecture's blocks wins.
    """
    seen_types = []
    for module in model.modules():
        config = getattr(module, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type is None or model_type in seen_types:
            continue
        seen_types.append(model_type)
        spec = SUPPORTED_ARCHITECTURES.get(model_type)
        if spec is None:
            continue
        if not any(type(sub).__name__ == spec.block_class for sub in module.modules()):
            continue
        projection = None
        if spec.grid_source == "patch_embedding":
            projection = next(
                (sub for name, sub in module.named_modules() if name.endswith(spec.patch_projection)), None
            )
            if projection is None:
                raise UnsupportedArchitectureError(
                    f"{type(module).__name__} has no patch projection '{spec.patch_projection}' "
                    "to read the token grid from."
                )
        return ResolvedArchitecture(spec, config, spec.num_prefix_tokens(config), projection)
    found = ", ".join(seen_types) if seen_types else "no transformers config at all"
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} is not a supported backbone (found model_type: {found}). "
        f"Supported model types: {', '.join(supported_model_types())}."
    )
