"""The one place that knows each supported architecture.

Block-level methods (Mona, and later VPT) need three facts about a backbone that PEFT's
``target_modules`` cannot express: which modules are the transformer blocks, where inside a
block the residual stream continues after the attention residual add, and how the block's
tokens lie on the 2-D patch grid (grid size, number of prefix tokens such as CLS, distillation
or register tokens). Supporting a new architecture means adding one ``ArchitectureSpec`` below.

A transformers backbone is known by its ``config.model_type``; a timm model, which has no transformers config, by its
class, as ``"timm:<class name>"`` (``"timm:VisionTransformer"``), whether it stands alone or sits inside transformers'
``TimmWrapperModel``. Nothing here imports timm.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

GridSource = Literal["input_dimensions", "patch_embedding", "feature_map", "spatial_shapes"]
#: How a block's output stream is laid out: token sequences ``(batch, tokens, channels)`` (with prefix tokens before
#: the row-major patch grid), or maps, channels first ``(batch, channels, height, width)`` (ConvNeXt) or channels last
#: ``(batch, height, width, channels)``.
StreamLayout = Literal["tokens", "channels_first", "channels_last"]
PromptLayout = Literal["sequence", "windows"]


@dataclass(frozen=True)
class WindowModules:
    """Where VPT's windowed variant (Swin) finds what it runs the prompt tokens through.

    Names are relative to one block, except ``downsample``, which is relative to the block's stage (the
    module holding the ``ModuleList`` of blocks): the patch merging after the stage's last block, or None.
    """

    attention: str = "attention"
    relative_position_bias: str = "attention.relative_position_bias"
    norm_before: str = "layernorm_before"
    norm_after: str = "layernorm_after"
    mlp: str = "mlp"
    dropout: str = "dropout"
    drop_path: str = "drop_path"
    downsample: str = "downsample"
    merge_norm: str = "norm"  # of the patch merging, on the 4 concatenated copies of a token
    merge_reduction: str = "reduction"  # of the patch merging: 4C -> 2C


@dataclass(frozen=True)
class ArchitectureSpec:
    """How block-level adapters attach to one architecture.

    Attributes:
        model_type: ``config.model_type`` of the backbone (``"swin"``, ``"vit"``, ...), or ``"timm:<class name>"`` for
            a timm model (see :func:`architecture_key`).
        block_class: class name of one transformer block (``"SwinLayer"``).
        block_pattern: regex (PEFT ``target_modules`` syntax) matching the blocks' module names.
        post_attention_input: submodule of the block whose input is the residual stream right after
            the attention residual add (and which starts the MLP branch); None for a block with one residual add
            (a CNN block: ConvNeXt's depthwise convolution and MLP share it), which gets one Mona, after it.
        grid_source: ``"input_dimensions"`` when the block receives its ``(height, width)`` as second
            argument (Swin), ``"patch_embedding"`` when the grid is read off the patch projection's
            output (plain ViTs, where every block sees the same grid), ``"feature_map"`` when the block takes
            a map whose own shape is the grid (and keeps it), ``"spatial_shapes"`` when every image has a grid of
            its own, given to the patch embedding as ``spatial_shapes`` (SigLIP 2: each image's tokens first, then
            padding).
        layout: how the block's output stream is laid out (:data:`StreamLayout`).
        patch_projection: name suffix of the patch-embedding convolution (for ``"patch_embedding"``), or of the
            embedding module that takes ``spatial_shapes`` (for ``"spatial_shapes"``).
        num_prefix_tokens: tokens before the patch tokens (CLS, distillation, registers), from the config (for a
            timm model, from the model itself, which holds its settings as attributes).
        prompt_layout: how VPT's prompt tokens join a block's tokens: ``"sequence"`` (inserted after the
            prefix tokens of the one token sequence: plain ViTs), ``"windows"`` (shared by every attention
            window: Swin), or ``None`` where VPT is not supported.
        embedding_width: width of the patch embedding, from the config (VPT's prompt initialisation).
        patch_size: the patch size (an int or a pair), from the config (VPT's prompt initialisation).
        attention_mask_argument: the block's keyword for an additive attention mask (VPT hides its prompts from the
            rows of a mixed batch that run the base model with it).
        prefix_grows: more tokens join in front of the sequence inside the network (EoMT's queries, in its last
            blocks): a block's prefix is then every token before its patch grid, at least ``num_prefix_tokens``.
        token_order: for tokens that are not in row-major order (Hiera unrolls them): ``(config, patch grid, the
            block's token count) -> (the row-major index of each token, the block's grid)``.
        window_modules: module names of the ``"windows"`` layout.

    Module names inside one block, for the baseline methods (``mona_peft.tuners.methods``):

        attention_projections: the query, key and value projections, in that order (LoRA).
        attention_output: the attention's output projection (Houlsby adapter after the MSA); None without attention.
        mlp_input: the module whose input is the MLP's input (AdaptFormer reads it).
        mlp_output: the module whose output is the MLP's output (AdaptFormer wraps it); the same module as
            ``mlp_input`` when the MLP is one module.
        mlp_output_projection: the MLP's last Linear (Houlsby adapter after the MLP).
        layer_norms: name suffixes of every LayerNorm of the backbone, blocks and outside them (LayerNorm tuning).
        lora_modules: the Linear layers LoRA adapts; default the query and value projections.
        head: modules of the backbone's own model that are its task head (a timm classifier keeps its ``head`` inside
            the model whose blocks it follows): every method trains them in full (:func:`head_modules`).
    """

    model_type: str
    block_class: str
    block_pattern: str
    post_attention_input: str | None
    grid_source: GridSource
    layout: StreamLayout = "tokens"
    patch_projection: str = "embeddings.patch_embeddings.projection"
    num_prefix_tokens: Callable[[Any], int] = lambda config: 0
    prompt_layout: PromptLayout | None = "sequence"
    embedding_width: Callable[[Any], int] = lambda config: config.hidden_size
    patch_size: Callable[[Any], Any] = lambda config: config.patch_size
    attention_mask_argument: str = "attention_mask"
    prefix_grows: bool = False
    token_order: Callable[[Any, tuple[int, int], int], tuple[torch.Tensor, tuple[int, int]]] | None = None
    window_modules: WindowModules | None = None
    attention_projections: tuple[str, str, str] = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
    attention_output: str | None = "attention.o_proj"
    mlp_input: str = "mlp"
    mlp_output: str = "mlp"
    mlp_output_projection: str = "mlp.fc2"
    layer_norms: tuple[str, ...] = ("layernorm_before", "layernorm_after", "layernorm")
    lora_modules: tuple[str, ...] = ()
    head: tuple[str, ...] = ()

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The Linear layers LoRA adapts in every block: ``lora_modules``, or the query and value projections."""
        return self.lora_modules or (self.attention_projections[0], self.attention_projections[2])

    def pattern_in_blocks(self, *names: str) -> str:
        """A PEFT ``target_modules`` regex matching the modules ``names`` (relative to a block) in every block."""
        return rf"{self.block_pattern}\.(?:{'|'.join(re.escape(name) for name in names)})"


_VIT_BLOCKS = r"(.*\.)?layers?\.\d+"
_SWIN_BLOCKS = r"(.*\.)?layers\.\d+\.blocks\.\d+"
# Swin also normalises the patch embedding and each patch merging; ViT/DeiT's names are the dataclass default. Its
# backbone (inside UperNet, Mask2Former, the detectors) normalises each stage it returns with `hidden_states_norms`
# (the final `layernorm` is then never applied): those are the norms dense heads read.
_SWIN_LAYER_NORMS = (
    "embeddings.norm",
    "layernorm_before",
    "layernorm_after",
    "downsample.norm",
    "layernorm",
    *(f"hidden_states_norms.stage{stage}" for stage in range(1, 5)),
)
_DINOV2_LAYER_NORMS = ("norm1", "norm2", "layernorm")


def _bert_style_names(self_attention: str) -> dict[str, Any]:
    """The module names of a block that keeps BERT's: the query, key and value of ``self_attention``, the attention's
    output projection ``attention.output.dense``, and the MLP as two sibling modules, ``intermediate`` then
    ``output`` (its last Linear ``output.dense``)."""
    return dict(
        attention_projections=tuple(f"{self_attention}.{name}" for name in ("query", "key", "value")),
        attention_output="attention.output.dense",
        mlp_input="intermediate",
        mlp_output="output",
        mlp_output_projection="output.dense",
    )


_CLIP_STYLE_NAMES = dict(
    attention_projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attention_output="self_attn.out_proj",
)


#: The module names timm's transformer blocks share (ViT's and Swin's): one fused `attn.qkv`, `attn.proj`,
#: `mlp.fc1/fc2`, and the classifier `head` inside the model.
_TIMM_NAMES = dict(
    attention_projections=("attn.qkv", "attn.qkv", "attn.qkv"),
    attention_output="attn.proj",
    lora_modules=("attn.qkv",),
    head=("head",),
)


def _hiera_token_order(config: Any, grid: tuple[int, int], num_tokens: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Hiera's token order: transformers' own ``unroll`` of the patch grid's coordinates. A stage's pooling keeps the
    first of each run of ``query_stride`` tokens, whose coordinates divided by the stride are the pooled token's."""
    from transformers.models.hiera.modeling_hiera import unroll

    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coordinates = torch.stack([rows, cols], dim=-1).reshape(1, height * width, 2).double()
    schedule = [config.query_stride] * (len(config.depths) - 1)
    unrolled = unroll(coordinates, image_shape=grid, patch_stride=(1, 1), schedule=schedule)[0].long()
    stride_h, stride_w = config.query_stride
    level = 0
    while (height // stride_h**level) * (width // stride_w**level) > num_tokens:
        level += 1
    pooled = (height // stride_h**level, width // stride_w**level)
    if pooled[0] * pooled[1] != num_tokens:
        raise ValueError(f"Hiera's {height}x{width} patch grid pools to no grid of {num_tokens} tokens.")
    row, col = unrolled[:num_tokens, 0] // stride_h**level, unrolled[:num_tokens, 1] // stride_w**level
    return row * pooled[1] + col, pooled


def _convnext(
    model_type: str, block_class: str, mlp: tuple[str, str], layer_norms: tuple[str, ...]
) -> ArchitectureSpec:
    """A ConvNeXt-style CNN: blocks of one residual add on channels-first maps, whose MLP is the two Linears ``mlp``."""
    return ArchitectureSpec(
        model_type,
        block_class,
        r"(.*\.)?stages\.\d+\.layers\.\d+",
        None,
        "feature_map",
        layout="channels_first",
        prompt_layout=None,
        attention_output=None,
        mlp_input=mlp[0],
        mlp_output=mlp[1],
        mlp_output_projection=mlp[1],
        layer_norms=layer_norms,
        lora_modules=mlp,
    )


SUPPORTED_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec(
            "swin",
            "SwinLayer",
            _SWIN_BLOCKS,
            "layernorm_after",
            "input_dimensions",
            layer_norms=_SWIN_LAYER_NORMS,
            prompt_layout="windows",
            embedding_width=lambda c: c.embed_dim,
            window_modules=WindowModules(),
        ),
        # VPT: Swin v2's attention computes its continuous position bias inside the attention, with no module
        # output to pad for prompt tokens, so the windowed prompt variant does not apply (prompt_layout=None).
        # Swin v2 uses post-norm residuals: the stream after the attention add feeds the MLP directly. Its modules keep
        # the BERT-style names, and its MLP is two sibling modules (`intermediate`, then `output`).
        ArchitectureSpec(
            "swinv2",
            "Swinv2Layer",
            _SWIN_BLOCKS,
            "intermediate",
            "input_dimensions",
            **_bert_style_names("attention.self"),
            layer_norms=_SWIN_LAYER_NORMS,
            prompt_layout=None,
        ),
        # MaskFormer's own copy of Swin (v1, pre-norm, SwinLayer-shaped) keeps the BERT-style names: the MLP is
        # `intermediate`, then `output` (the block adds the residual itself). VPT: its attention adds the relative
        # position bias straight from the parameter table, with no module output to pad for prompt tokens, so the
        # windowed prompt variant does not apply (prompt_layout=None). Its per-stage output norms, which the pixel
        # decoder reads, are indexed by number (SwinBackbone's by stage name).
        ArchitectureSpec(
            "maskformer-swin",
            "MaskFormerSwinLayer",
            _SWIN_BLOCKS,
            "layernorm_after",
            "input_dimensions",
            **_bert_style_names("attention.self"),
            layer_norms=(*_SWIN_LAYER_NORMS, *(f"hidden_states_norms.{index}" for index in range(4))),
            prompt_layout=None,
            embedding_width=lambda c: c.embed_dim,
        ),
        ArchitectureSpec(
            "vit", "ViTLayer", _VIT_BLOCKS, "layernorm_after", "patch_embedding", num_prefix_tokens=lambda c: 1
        ),
        # DPT's ViT (non-hybrid) keeps the BERT-style names; its MLP is `intermediate`, then `output` (which also adds
        # the residual, so an adapter on `output` still adds to the block's output).
        ArchitectureSpec(
            "dpt",
            "DPTViTLayer",
            _VIT_BLOCKS,
            "layernorm_after",
            "patch_embedding",
            num_prefix_tokens=lambda c: 1,
            **_bert_style_names("attention.attention"),
        ),
        # DeiT prepends a CLS and a distillation token.
        ArchitectureSpec(
            "deit", "DeiTLayer", _VIT_BLOCKS, "layernorm_after", "patch_embedding", num_prefix_tokens=lambda c: 2
        ),
        ArchitectureSpec(
            "dinov2",
            "Dinov2Layer",
            _VIT_BLOCKS,
            "norm2",
            "patch_embedding",
            num_prefix_tokens=lambda c: 1,
            layer_norms=_DINOV2_LAYER_NORMS,
        ),
        ArchitectureSpec(
            "dinov2_with_registers",
            "Dinov2WithRegistersLayer",
            _VIT_BLOCKS,
            "norm2",
            "patch_embedding",
            num_prefix_tokens=lambda c: 1 + c.num_register_tokens,
            layer_norms=_DINOV2_LAYER_NORMS,
        ),
        # ConvNeXt (v1, v2): maps, channels first, through blocks with one residual add each (a 7x7 depthwise
        # convolution, then a channels-last MLP, `pwconv1` and `pwconv2`). The authors place one Mona after each
        # residual block of a CNN (official repository, issue #6): here, after the block's add. No attention: LoRA
        # adapts the MLP's two Linears, the Houlsby adapter follows the MLP only, and VPT has no tokens to extend.
        _convnext("convnext", "ConvNextLayer", ("pwconv1", "pwconv2"), ("layernorm", "downsampling_layer.0")),
        _convnext("convnextv2", "ConvNextV2Layer", ("pwconv1", "pwconv2"), ("layernorm", "downsampling_layer.0")),
        # DINOv3's ConvNeXt: ConvNeXt's block under other names. Its stages normalise before downsampling
        # (`downsample_layers.0`), except the first, which normalises after its stem convolution.
        _convnext(
            "dinov3_convnext",
            "DINOv3ConvNextLayer",
            ("pointwise_conv1", "pointwise_conv2"),
            (
                "layer_norm",
                "stages.0.downsample_layers.1",
                *(f"stages.{stage}.downsample_layers.0" for stage in range(1, 4)),
            ),
        ),
        # SAM's vision encoder (SamModel's `vision_encoder`, SamVisionModel): maps laid out channels last
        # `(batch, height, width, channels)` through pre-norm blocks, most attending in windows, some globally
        # (`global_attn_indexes`); either way the stream between the adds is the whole map. One `attn.qkv` Linear
        # (LoRA adapts it); VPT has no token sequence to extend.
        ArchitectureSpec(
            "sam_vision_model",
            "SamVisionLayer",
            r"(.*\.)?vision_encoder\.layers\.\d+",  # the mask decoder's two-way blocks are `layers.i` too
            "layer_norm2",
            "feature_map",
            layout="channels_last",
            prompt_layout=None,
            attention_output="attn.proj",
            mlp_output_projection="mlp.lin2",
            layer_norms=("layer_norm1", "layer_norm2"),
            lora_modules=("attn.qkv",),
        ),
        # DINOv3's ViT: CLS and register tokens, rotary positions (given to every block, applied to the patch tokens
        # only, so Mona's and VPT's prefix handling applies unchanged), LayerScale on both branches.
        ArchitectureSpec(
            "dinov3_vit",
            "DINOv3ViTLayer",
            _VIT_BLOCKS,
            "norm2",
            "patch_embedding",
            patch_projection="embeddings.patch_embeddings",
            num_prefix_tokens=lambda c: 1 + c.num_register_tokens,
            mlp_output_projection="mlp.down_proj",
            layer_norms=("norm1", "norm2", "norm"),
        ),
        # The vision towers of CLIP and SigLIP (pre-norm blocks: `self_attn`, `layer_norm1/2`, `mlp.fc1/fc2`). CLIP
        # prepends a CLS token and normalises the embeddings (`pre_layrnorm`, transformers' spelling); its
        # `post_layernorm` normalises only the pooled CLS, which its classifier does not read (it averages the patch
        # tokens), so LN tuning leaves it out. SigLIP has no prefix token, normalises every output token
        # (`post_layernorm`) and pools with attention (`head`, inside the tower).
        *(
            ArchitectureSpec(
                model_type,
                block_class,
                _VIT_BLOCKS,
                "layer_norm2",
                "patch_embedding",
                patch_projection="embeddings.patch_embedding",
                num_prefix_tokens=lambda c, prefix=prefix: prefix,
                **_CLIP_STYLE_NAMES,
                layer_norms=("layer_norm1", "layer_norm2", outer_norm),
            )
            for model_type, block_class, prefix, outer_norm in (
                ("clip_vision_model", "CLIPEncoderLayer", 1, "pre_layrnorm"),
                ("siglip_vision_model", "SiglipEncoderLayer", 0, "post_layernorm"),
            )
        ),
        # SigLIP 2's vision tower (NaFlex): every image keeps its aspect ratio on a grid of its own (`spatial_shapes`,
        # given to the embeddings), its patches first in row-major order, then padding up to the longest image.
        # Mona filters each image on its own grid; padding takes Mona's token path only, as CLS does elsewhere (the
        # attention and the pooling head mask it). VPT's prompts would need the padding mask of each image.
        ArchitectureSpec(
            "siglip2_vision_model",
            "Siglip2EncoderLayer",
            _VIT_BLOCKS,
            "layer_norm2",
            "spatial_shapes",
            patch_projection="embeddings",
            prompt_layout=None,
            **_CLIP_STYLE_NAMES,
            layer_norms=("layer_norm1", "layer_norm2", "post_layernorm"),
        ),
        # Hiera: pre-norm blocks on tokens that are not in row-major order (unrolled, so that each stage's pooling is a
        # max over contiguous runs); the first block of a stage pools and widens the stream before its attention add.
        # Mona's filter puts each block's tokens in row-major order on that stage's grid and back (token_order). One
        # `attn.qkv` Linear (LoRA adapts it); VPT: prompts would be pooled with the patches.
        ArchitectureSpec(
            "hiera",
            "HieraLayer",
            r"(.*\.)?stages\.\d+\.layers\.\d+",
            "layernorm_after",
            "patch_embedding",
            prompt_layout=None,
            token_order=_hiera_token_order,
            attention_projections=("attn.qkv", "attn.qkv", "attn.qkv"),
            attention_output="attn.proj",
            lora_modules=("attn.qkv",),
        ),
        # EoMT: a plain ViT (CLS and registers, LayerScale) whose last `num_blocks` blocks also carry the mask queries,
        # which join in front of the sequence; Mona's filter keeps to the patch grid behind them. The heads (the
        # queries, the upscaling, the mask head and the class predictor) are the model's own modules. VPT: the mask
        # head reads the patch tokens at fixed positions, where prompts would sit.
        ArchitectureSpec(
            "eomt",
            "EomtLayer",
            _VIT_BLOCKS,
            "norm2",
            "patch_embedding",
            num_prefix_tokens=lambda c: 1 + c.num_register_tokens,
            prefix_grows=True,
            prompt_layout=None,
            attention_output="attention.out_proj",
            layer_norms=("norm1", "norm2", "layernorm"),
            head=("query", "upscale_block", "mask_head", "class_predictor"),
        ),
        # timm's ViT (also DeiT, EVA-free plain ViTs with CLS and register tokens: `num_prefix_tokens` counts them):
        # pre-norm blocks with LayerScale (`ls1`, `ls2`), one fused `attn.qkv` Linear (LoRA adapts it). Its head sits
        # inside the model. `norm` also matches the final norm (and the Identity placeholders timm names `norm`).
        ArchitectureSpec(
            "timm:VisionTransformer",
            "Block",
            r"(.*\.)?blocks\.\d+",
            "norm2",
            "patch_embedding",
            patch_projection="patch_embed.proj",
            num_prefix_tokens=lambda model: model.num_prefix_tokens,
            embedding_width=lambda model: model.embed_dim,
            patch_size=lambda model: model.patch_embed.patch_size,
            attention_mask_argument="attn_mask",
            **_TIMM_NAMES,
            layer_norms=("norm1", "norm2", "norm"),
        ),
        # timm's Swin (timm >= 0.9): blocks take and return channels-last maps `(batch, height, width, channels)` and
        # flatten them to tokens between their two residual adds; the grid is the map's. VPT's windowed prompts need
        # transformers' Swin modules (prompt_layout=None here).
        ArchitectureSpec(
            "timm:SwinTransformer",
            "SwinTransformerBlock",
            r"(.*\.)?layers\.\d+\.blocks\.\d+",
            "norm2",
            "feature_map",
            layout="channels_last",
            prompt_layout=None,
            **_TIMM_NAMES,
            layer_norms=("norm1", "norm2", "norm"),
        ),
        # timm's ConvNeXt: one residual add per block on channels-first maps (one Mona after it, as for transformers'
        # ConvNeXt); its head (`head`: a norm, then `fc`) is inside the model.
        ArchitectureSpec(
            "timm:ConvNeXt",
            "ConvNeXtBlock",
            r"(.*\.)?stages\.\d+\.blocks\.\d+",
            None,
            "feature_map",
            layout="channels_first",
            prompt_layout=None,
            attention_output=None,
            mlp_input="mlp.fc1",
            mlp_output="mlp.fc2",
            mlp_output_projection="mlp.fc2",
            layer_norms=("stem.1", "downsample.0", "norm"),
            lora_modules=("mlp.fc1", "mlp.fc2"),
            head=("head",),
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


def architecture_key(module: nn.Module) -> str | None:
    """The key of ``module`` in ``SUPPORTED_ARCHITECTURES``' namespace: its transformers ``config.model_type``,
    ``"timm:<class name>"`` for a timm model, or None for a module that is neither."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if isinstance(model_type, str):
        return model_type
    # Every timm model (and none of its parts) has `forward_features`.
    if type(module).__module__.startswith("timm.") and hasattr(module, "forward_features"):
        return f"timm:{type(module).__name__}"
    return None


def find_blocks(model: nn.Module, spec: ArchitectureSpec | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of every transformer block of ``model``'s backbone, in forward order."""
    spec = spec or resolve_architecture(model).spec
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ == spec.block_class and re.fullmatch(spec.block_pattern, name)
    ]


def resolve_architecture(model: nn.Module) -> ResolvedArchitecture:
    """Find the supported backbone inside ``model``.

    The backbone may be the model itself (``SwinForImageClassification``, a timm model) or nested in it (the
    ``SwinBackbone`` of an ``UperNetForSemanticSegmentation``, the timm model of a ``TimmWrapperModel``): the first
    sub-model whose key (:func:`architecture_key`) is supported and which contains that architecture's blocks wins.
    """
    seen_types = []
    for module in model.modules():
        model_type = architecture_key(module)
        if model_type is None or model_type in seen_types:
            continue
        seen_types.append(model_type)
        spec = SUPPORTED_ARCHITECTURES.get(model_type)
        if spec is None:
            continue
        config = module if model_type.startswith("timm:") else module.config
        if not any(type(sub).__name__ == spec.block_class for sub in module.modules()):
            continue
        projection = None
        if spec.grid_source in ("patch_embedding", "spatial_shapes"):
            projection = next(
                (sub for name, sub in module.named_modules() if name.endswith(spec.patch_projection)), None
            )
            if projection is None:
                raise UnsupportedArchitectureError(
                    f"{type(module).__name__} has no patch projection '{spec.patch_projection}' "
                    "to read the token grid from."
                )
        return ResolvedArchitecture(spec, config, spec.num_prefix_tokens(config), projection)
    found = ", ".join(seen_types) if seen_types else "no transformers config and no timm model"
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} is not a supported backbone (found model_type: {found}). "
        f"Supported model types: {', '.join(supported_model_types())}."
    )


#: Modules that only hold others (no forward of their own): ``head_modules`` names their elements instead.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def head_modules(model: nn.Module) -> list[str]:
    """Names of the modules outside ``model``'s backbone that hold parameters: what every method trains in full.

    The largest such modules are named (``decode_head``, not its convolutions): the decode and auxiliary heads of an
    UperNet, the neck and head of a DPT, the classifier of an image classifier, the transformer and prediction
    heads of a detector, the ``head`` a timm model keeps inside itself (declared in its spec). The backbone's other
    modules (its norms included) are never listed. A ``ModuleList`` or
    ``ModuleDict`` has no forward of its own, and PEFT's ``modules_to_save`` refuses to wrap one, so it is named by
    its elements (RT-DETR's ``model.encoder_input_proj.0``, ...). A module without parameters (a sine position
    embedding, a loss) is not named.
    """
    spec = resolve_architecture(model).spec
    block_names = {name for name, _ in find_blocks(model, spec)}

    def is_backbone(name: str, module: nn.Module) -> bool:
        return (
            module is not model
            and architecture_key(module) == spec.model_type
            and any(block.startswith(f"{name}.") for block in block_names)
        )

    # The highest sub-model of the backbone's type below the root (the root of a classifier shares its config), or the
    # root itself (a plain timm model, whose head is declared in its spec).
    backbone_name, backbone = next(
        ((name, module) for name, module in model.named_modules() if is_backbone(name, module)),
        ("", model),
    )
    names = [
        f"{backbone_name}.{name}".lstrip(".")
        for name in spec.head
        if any(True for _ in backbone.get_submodule(name).parameters())
    ]

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if child is backbone:
                continue
            if any(sub is backbone for sub in child.modules()) or isinstance(child, _CONTAINERS):
                visit(f"{prefix}{name}.", child)
            elif any(True for _ in child.parameters()):
                names.append(f"{prefix}{name}")

    if backbone is not model:
        visit("", model)
    return names
