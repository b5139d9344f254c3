"""Mona's building blocks and the tuner layer that places two Monas in a transformer block."""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..architectures import ResolvedArchitecture
from ..tuner_utils import BASE_ADAPTER_NAME, WrappingLayer, require_grad_for_checkpointing

try:  # transformers >= 5 records `output_hidden_states` with forward hooks on the block classes
    from transformers.utils import output_capturing as _output_capturing
except ImportError:  # pragma: no cover
    _output_capturing = None

#: The two insertion points of a block: after the attention residual add, after the MLP residual add.
SITES = ("attn", "mlp")
PIECES = ("norm", "down", "filter", "up")
#: A block's patch grid, ``(height, width)``, or one per image of the batch (SigLIP 2).
Grid = tuple[int, int] | list[tuple[int, int]]


class ScaledLayerNorm(nn.Module):
    """``LayerNorm(x) * gamma + x * gammax`` with per-channel ``gamma`` (init 1e-6) and ``gammax`` (init 1)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gamma folded into the LayerNorm's affine (channel-sized products): one pass over x fewer than `LN(x) * gamma`
        if hasattr(self, "frozen_weight"):  # prepared for inference: folded once
            _refuse_training(self)
            weight, bias = self.frozen_weight, self.frozen_bias
        else:
            weight, bias = self.weight * self.gamma, self.bias * self.gamma
        normed = F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)
        return torch.addcmul(normed, x, self.gammax)  # one kernel for `+ x * gammax`

    def freeze(self) -> None:
        """Fold ``gamma`` into the affine once (:func:`mona_peft.prepare_for_inference`)."""
        with torch.no_grad():
            self.register_buffer("frozen_weight", self.weight * self.gamma, persistent=False)
            self.register_buffer("frozen_bias", self.bias * self.gamma, persistent=False)


def _refuse_training(module: nn.Module) -> None:
    """A module prepared for inference holds frozen copies of its parameters: training it would change nothing."""
    if module.training or torch.is_grad_enabled():
        raise RuntimeError(
            "This Mona was prepared for inference (mona_peft.prepare_for_inference): its fused kernels are copies of "
            "its parameters, computed once, so a training-mode or grad-enabled forward would train nothing. Run it "
            "in eval mode under torch.no_grad() / torch.inference_mode(), or load the adapter again to train it."
        )


class MultiCognitiveFilter(nn.Module):
    """Mona's filter on the patch grid: ``z1 = mean_k(dwconv_k(z)) + z``, then ``z2 = z1 + conv1x1(z1)``.

    The parameters are the paper's (one depthwise kernel per size, a 1x1 projection), so
    checkpoints match its parameterisation. The forward pass is fused: the averaged depthwise
    convolutions plus identity equal one depthwise convolution with the zero-padded average kernel
    plus a centre delta, and the 1x1 convolution plus identity is one linear map ``W + I``. That is
    one depthwise kernel launch instead of three, and no identity additions. Tokens are viewed as
    a channels-last image, so neither direction copies memory for a permute.
    """

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_sizes = tuple(kernel_sizes)
        self.fused = True
        for k in self.kernel_sizes:
            self.register_parameter(f"dw{k}_weight", nn.Parameter(torch.empty(channels, 1, k, k)))
            self.register_parameter(f"dw{k}_bias", nn.Parameter(torch.empty(channels)))
        self.pw_weight = nn.Parameter(torch.empty(channels, channels, 1, 1))
        self.pw_bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default ``Conv2d`` initialisation, as the official code uses."""
        for weight, bias in self.conv_parameters():
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(bias, -bound, bound)

    def conv_parameters(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) of each depthwise convolution, then of the 1x1 projection."""
        pairs = [(getattr(self, f"dw{k}_weight"), getattr(self, f"dw{k}_bias")) for k in self.kernel_sizes]
        return pairs + [(self.pw_weight, self.pw_bias)]

    def fused_depthwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One depthwise kernel and bias equal to the average of the kernels plus identity."""
        size = max(self.kernel_sizes)
        kernel = None
        for k in self.kernel_sizes:
            pad = (size - k) // 2
            weight = getattr(self, f"dw{k}_weight")
            padded = F.pad(weight, (pad, pad, pad, pad)) if pad else weight
            kernel = padded if kernel is None else kernel + padded
        kernel = kernel / len(self.kernel_sizes)  # a new tensor: the in-place identity below touches no parameter
        centre = size // 2
        kernel[:, :, centre, centre] += 1.0
        bias = torch.stack([getattr(self, f"dw{k}_bias") for k in self.kernel_sizes]).mean(0)
        return kernel, bias

    def fused_projection(self) -> torch.Tensor:
        """``W + I``: the 1x1 projection plus identity as one matrix."""
        weight = self.pw_weight.view(self.channels, self.channels)
        return weight + _identity(self.channels, weight.dtype, weight.device)

    def spatial(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``z + mean_k(dwconv_k(z))`` on tokens ``(B, H*W, C)`` laid out row-major on ``grid``."""
        batch, tokens, channels = z.shape
        height, width = grid
        image = z.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # channels-last view
        if self.fused:
            kernel, bias = self._fused("frozen_kernel", "frozen_kernel_bias") or self.fused_depthwise()
            out = F.conv2d(image, kernel, bias, padding=kernel.shape[-1] // 2, groups=channels)
        else:
            convs = [
                F.conv2d(
                    image, getattr(self, f"dw{k}_weight"), getattr(self, f"dw{k}_bias"), padding=k // 2, groups=channels
                )
                for k in self.kernel_sizes
            ]
            out = torch.stack(convs).mean(0) + image
        return out.permute(0, 2, 3, 1).reshape(batch, tokens, channels)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """``z + conv1x1(z)``, per token."""
        if self.fused:
            (projection,) = self._fused("frozen_projection") or (self.fused_projection(),)
            return F.linear(z, projection, self.pw_bias)
        return z + F.linear(z, self.pw_weight.view(self.channels, self.channels), self.pw_bias)

    def _fused(self, *names: str) -> tuple[torch.Tensor, ...] | None:
        """The frozen fused tensors ``names`` (after :meth:`freeze`), or None."""
        if not hasattr(self, names[0]):
            return None
        _refuse_training(self)
        return tuple(getattr(self, name) for name in names)

    def freeze(self) -> None:
        """Compute the fused depthwise kernel and the ``W + I`` projection once (``mona_peft.prepare_for_inference``):
        later forwards use these copies, and refuse to run in training mode or with gradients enabled."""
        self.fused = True
        with torch.no_grad():
            kernel, bias = self.fused_depthwise()
            self.register_buffer("frozen_kernel", kernel, persistent=False)
            self.register_buffer("frozen_kernel_bias", bias, persistent=False)
            self.register_buffer("frozen_projection", self.fused_projection().clone(), persistent=False)


_IDENTITIES: dict[tuple, torch.Tensor] = {}


def _identity(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A shared ``size x size`` identity matrix (built once per dtype and device, never inside inference mode)."""
    if torch.compiler.is_compiling():  # traced into the graph (constant-folded there)
        return torch.eye(size, dtype=dtype, device=device)
    key = (size, dtype, device)
    eye = _IDENTITIES.get(key)
    if eye is None:
        eye = torch.eye(size, dtype=dtype, device=device)
        if not torch.is_inference_mode_enabled():  # an inference tensor could not join autograd later
            _IDENTITIES[key] = eye
    return eye


def _trunc_normal_linear(in_features: int, out_features: int, zero: bool = False) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


def _select_rows(routing: list[str], name: str, device: torch.device) -> torch.Tensor:
    return torch.tensor([i for i, routed in enumerate(routing) if routed == name], device=device, dtype=torch.long)


def _recorded_hidden_states() -> list | None:
    """The list that transformers' ``output_hidden_states`` capture is appending to right now, if any."""
    collector = getattr(_output_capturing, "_active_collector", None)
    collected = collector.get() if collector is not None else None
    states = collected.get("hidden_states") if isinstance(collected, dict) else None
    return states if isinstance(states, list) else None


def _filter_on_grid(
    conv: MultiCognitiveFilter,
    patches: torch.Tensor,
    grid: Grid,
    order: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """The spatial filter on patch tokens, put in row-major order first and back after where ``order`` says how; with
    one grid per image (a list), each image's first tokens are filtered on its grid and its padding is left as is."""
    if isinstance(grid, list):
        return torch.cat(
            [
                torch.cat([conv.spatial(image[:, : h * w], (h, w)), image[:, h * w :]], dim=1)
                for image, (h, w) in zip(patches.split(1), grid, strict=True)
            ]
        )
    if order is None:
        return conv.spatial(patches, grid)
    to_row_major, back = order
    return conv.spatial(patches[:, to_row_major], grid)[:, back]


class MonaLayer(nn.Module, WrappingLayer):
    """Wraps one transformer block and applies Mona at the paper's two insertion points.

    ``x = x + attn(x)``, then ``x = mona_attn(x)``: this happens *inside* the block's forward, so a
    forward pre-hook on the module that consumes the post-attention residual stream (e.g.
    ``layernorm_after``) applies Mona there and remembers Mona's contribution ``d``; the MLP branch
    therefore sees ``x + d``. The block adds its MLP output to the un-adapted residual ``x``, so this
    layer adds ``d`` back to the block's output, which makes the residual ``x + d`` as in the paper,
    then applies ``mona_mlp``. When gradient checkpointing is on, this layer checkpoints the whole
    adapted block (the block's own checkpointing would recompute the hook but not the addition).

    Per-adapter state is flat, one ``ModuleDict`` per piece (``mona_attn_down[adapter]``...), as
    PEFT's save/load and adapter renaming expect.
    """

    method_name = "Mona"
    merge_reason = "Mona is a non-linear module on the residual stream (LayerNorm, depthwise convolutions, GELU)"
    adapter_layer_names = tuple(f"mona_{site}_{piece}" for site in SITES for piece in PIECES)
    other_param_names = ("mona_dropout", "mona_prefix_tokens", "mona_gradient_checkpointing")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        architecture: ResolvedArchitecture,
        token_grid: TokenGrid,
        module_name: str = "",
    ) -> None:
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.module_name = module_name  # the block's name in the base model (``inner_dim_pattern`` keys match it)
        for name in self.adapter_layer_names + ("mona_dropout",):
            setattr(self, name, nn.ModuleDict())
        self.mona_prefix_tokens: dict[str, str] = {}
        self.mona_gradient_checkpointing: dict[str, bool] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.architecture = architecture
        self.token_grid = token_grid
        self._pending: dict[str, Any] | None = None
        consumer_name = architecture.spec.post_attention_input
        consumer = base_layer.get_submodule(consumer_name) if consumer_name else None
        # the stream's width at the sites: the norm after the attention add says it (a Hiera block widens before it)
        self.channels = (
            consumer.normalized_shape[0] if isinstance(consumer, nn.LayerNorm) else self._block_width(base_layer)
        )
        self._token_orders: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = {}
        #: A block with one residual add (a CNN block) has one Mona, after it: the "mlp" site.
        self.sites = SITES if consumer_name else ("mlp",)
        self._consumer_hook = None
        if consumer is not None:
            self._consumer_hook = consumer.register_forward_pre_hook(self._post_attention_hook)
        self.update_layer(adapter_name, config)
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, config: Any) -> None:
        """Create the two Monas of ``adapter_name``, each as wide as ``mona_inner_dim`` says (0: none at that site)."""
        from .config import mona_inner_dim

        for site in self.sites:
            inner_dim = mona_inner_dim(config, self.module_name, site)
            if inner_dim == 0:  # MiMi removed this Mona: the block skips this site for this adapter
                continue
            getattr(self, f"mona_{site}_norm")[adapter_name] = ScaledLayerNorm(self.channels)
            getattr(self, f"mona_{site}_down")[adapter_name] = _trunc_normal_linear(self.channels, inner_dim)
            getattr(self, f"mona_{site}_filter")[adapter_name] = MultiCognitiveFilter(inner_dim, config.kernel_sizes)
            getattr(self, f"mona_{site}_up")[adapter_name] = _trunc_normal_linear(
                inner_dim, self.channels, zero=config.init_weights == "identity"
            )
        self.mona_dropout[adapter_name] = nn.Dropout(config.dropout)
        self.mona_prefix_tokens[adapter_name] = config.prefix_tokens
        self.mona_gradient_checkpointing[adapter_name] = getattr(config, "gradient_checkpointing", False)
        self._finish_update(adapter_name)

    def _remove_hooks(self) -> None:
        if self._consumer_hook is not None:
            self._consumer_hook.remove()

    # -- forward ------------------------------------------------------------------------------------------
    def _adapters_to_apply(self) -> list[str]:
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if self.has_mona(name)]

    def has_mona(self, adapter: str, site: str | None = None) -> bool:
        """Whether ``adapter`` has a Mona here (at ``site``, or at either site); MiMi can remove one or both."""
        return any(adapter in getattr(self, f"mona_{s}_down") for s in ((site,) if site else SITES))

    def _grid(self, args: tuple, kwargs: dict) -> Grid:
        """The patch grid of this call: given to the block (Swin), the shape of its input map (``feature_map``), or
        the patch embedding's last output."""
        if self.architecture.spec.grid_source == "feature_map":
            # a block keeps its map's size (a stage downsamples outside its blocks)
            shape = (args[0] if args else next(iter(kwargs.values()))).shape
            return (shape[2], shape[3]) if self.architecture.spec.layout == "channels_first" else (shape[1], shape[2])
        if self.architecture.spec.grid_source == "input_dimensions":
            height, width = args[1] if len(args) > 1 else kwargs["input_dimensions"]
            return int(height), int(width)
        if self.token_grid.size is None:
            raise RuntimeError("Mona has not seen the patch embedding yet: call the model on pixel_values.")
        return self.token_grid.size

    def _mona_delta(self, site: str, adapter: str, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Mona's contribution ``mona(x) - x`` for one adapter at one site."""
        down = getattr(self, f"mona_{site}_down")[adapter]
        x = self._cast_input_dtype(x, down.weight.dtype)
        num_prefix = self.architecture.num_prefix_tokens
        order = None
        if self.architecture.spec.token_order is not None:  # unrolled tokens (Hiera): this block's grid and order
            order, grid = self._token_order(grid, x.shape[1] - num_prefix, x.device)
        if isinstance(grid, list):  # one grid per image, then padding (SigLIP 2)
            if len(grid) != x.shape[0] or any(h * w > x.shape[1] - num_prefix for h, w in grid):
                raise ValueError(
                    f"Mona expected {len(grid)} images of patch grids {grid} within their hidden states, but the "
                    f"block's hidden states have shape {tuple(x.shape)}."
                )
        else:
            height, width = grid
            if self.architecture.spec.prefix_grows and x.shape[1] > num_prefix + height * width:
                num_prefix = x.shape[1] - height * width  # tokens that joined in front (EoMT's queries)
            if x.shape[1] != num_prefix + height * width:
                raise ValueError(
                    f"Mona expected {num_prefix} prefix tokens + a {height}x{width} patch grid = "
                    f"{num_prefix + height * width} tokens, but the block's hidden states have shape {tuple(x.shape)}."
                )
        if self.mona_gradient_checkpointing.get(adapter, False) and torch.is_grad_enabled():
            # Only x is kept for backward; the inside (about 5 token-sized tensors per Mona) is recomputed then, with
            # the same dropout mask (checkpoint restores the RNG state).
            return torch.utils.checkpoint.checkpoint(
                self._mona_inside, site, adapter, x, grid, num_prefix, order, use_reentrant=False
            )
        return self._mona_inside(site, adapter, x, grid, num_prefix, order)

    def _token_order(
        self, grid: tuple[int, int], num_tokens: int, device: torch.device
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]:
        """``((to row-major, back), grid)`` of this block's ``num_tokens`` unrolled tokens, computed once per size."""
        key = (grid, num_tokens, device)
        if key not in self._token_orders:
            index, block_grid = self.architecture.spec.token_order(self.architecture.config, grid, num_tokens)
            self._token_orders[key] = ((index.argsort().to(device), index.to(device)), block_grid)
        return self._token_orders[key]

    def _mona_inside(
        self,
        site: str,
        adapter: str,
        x: torch.Tensor,
        grid: Grid,
        num_prefix: int,
        order: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scaled norm, down projection, filter, GELU, dropout, up projection (the part ``gradient_checkpointing``
        recomputes); ``order`` puts unrolled patch tokens in row-major order for the filter and back."""
        norm = getattr(self, f"mona_{site}_norm")[adapter]
        down = getattr(self, f"mona_{site}_down")[adapter]
        conv = getattr(self, f"mona_{site}_filter")[adapter]
        up = getattr(self, f"mona_{site}_up")[adapter]
        z = down(norm(x))
        skip_prefix = num_prefix and self.mona_prefix_tokens[adapter] == "skip"
        if num_prefix:
            prefix, patches = z[:, :num_prefix], z[:, num_prefix:]
            patches = _filter_on_grid(conv, patches, grid, order)
            z = patches if skip_prefix else torch.cat([prefix, patches], dim=1)
        else:
            z = _filter_on_grid(conv, z, grid, order)
        z = up(self.mona_dropout[adapter](F.gelu(conv.project(z))))
        if skip_prefix:
            z = F.pad(z, (0, 0, num_prefix, 0))
        return z

    def _site_delta(self, site: str, x: torch.Tensor, grid: Grid, routing: list[str] | None) -> torch.Tensor | None:
        """Total contribution of the active adapters (applied one after another), or per-sample routing.

        ``None`` when no adapter has a Mona at this site (e.g. MiMi removed it).
        """
        if routing is not None:
            delta = torch.zeros_like(x)
            for adapter in dict.fromkeys(routing):
                if adapter == BASE_ADAPTER_NAME or not self.has_mona(adapter, site):
                    continue
                rows = _select_rows(routing, adapter, x.device)
                row_grid = [grid[row] for row in rows.tolist()] if isinstance(grid, list) else grid
                delta[rows] = self._mona_delta(site, adapter, x[rows], row_grid).to(x.dtype)
            return delta
        delta = None
        for adapter in self._adapters_to_apply():
            if not self.has_mona(adapter, site):
                continue
            step = self._mona_delta(site, adapter, x if delta is None else x + delta, grid).to(x.dtype)
            delta = step if delta is None else delta + step
        return delta

    def _post_attention_hook(self, module: nn.Module, args: tuple):
        pending = self._pending
        if pending is None:  # the block was called directly (adapters disabled)
            return None
        hidden = args[0]
        tokens, grid, as_stream = self._as_tokens(hidden, pending["grid"])
        delta = self._site_delta("attn", tokens, grid, pending["routing"])
        pending["ran"] = True
        if delta is None:
            return None
        pending["delta"] = delta = as_stream(delta)
        return (hidden + delta,) + tuple(args[1:])

    def _adapted_forward(self, *args: Any, routing: list[str] | None = None, checkpointed: bool = False, **kwargs: Any):
        grid = self._grid(args, kwargs)
        self._pending = {"grid": grid, "routing": routing, "delta": None, "ran": False}
        try:
            if checkpointed:  # call the block's own forward, not its checkpointing wrapper
                out = inspect.unwrap(type(self.base_layer).forward)(self.base_layer, *args, **kwargs)
            else:
                out = self.base_layer(*args, **kwargs)
            attn_delta, ran = self._pending["delta"], self._pending["ran"]
        finally:
            self._pending = None
        if not ran and self._consumer_hook is not None:
            raise RuntimeError(
                f"Mona's post-attention hook on '{self.architecture.spec.post_attention_input}' did not run; "
                f"the {type(self.base_layer).__name__} forward no longer matches mona_peft.tuners.architectures."
            )
        hidden = out[0] if isinstance(out, tuple) else out
        if attn_delta is not None:
            # (batch, tokens, channels) where the block flattened its channels-last map between the adds (timm's Swin)
            hidden = hidden + attn_delta.reshape(hidden.shape)
        tokens, grid, as_stream = self._as_tokens(hidden, grid)
        mlp_delta = self._site_delta("mlp", tokens, grid, routing)
        if mlp_delta is not None:
            hidden = hidden + as_stream(mlp_delta)
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

    def _as_tokens(self, hidden: torch.Tensor, grid: Grid):
        """``hidden`` as tokens ``(batch, tokens, channels)``, its grid, and the map back to the block's layout (a map's
        grid is its own shape). A block may flatten its map to tokens between its adds (timm's Swin)."""
        if hidden.dim() == 3:
            return hidden, grid, lambda tokens: tokens
        if self.architecture.spec.layout == "channels_first":
            batch, channels, height, width = hidden.shape
            return (
                hidden.flatten(2).transpose(1, 2),
                (height, width),
                lambda tokens: tokens.transpose(1, 2).reshape(batch, channels, height, width),
            )
        batch, height, width, channels = hidden.shape
        return hidden.reshape(batch, height * width, channels), (height, width), lambda t: t.reshape(hidden.shape)

    def forward(self, *args: Any, **kwargs: Any):
        routing = kwargs.pop("adapter_names", None)
        if routing is None and not self._adapters_to_apply():
            return self.base_layer(*args, **kwargs)
        if routing is not None and all(name == BASE_ADAPTER_NAME for name in routing):
            return self.base_layer(*args, **kwargs)
        recorded = _recorded_hidden_states()
        num_recorded = None if recorded is None else len(recorded)
        block = self.base_layer
        if getattr(block, "gradient_checkpointing", False) and self.training:
            if not torch.is_grad_enabled():  # e.g. the first pass of a reentrant checkpoint of Swin's whole stage
                out = self._adapted_forward(*args, routing=routing, checkpointed=True, **kwargs)
            else:
                args = require_grad_for_checkpointing(self, args)
                function = partial(self._adapted_forward, routing=routing, checkpointed=True, **kwargs)
                out = block._gradient_checkpointing_func(function, *args)
        else:
            out = self._adapted_forward(*args, routing=routing, **kwargs)
        if recorded is not None and len(recorded) > num_recorded and recorded[-1] is not None:
            # transformers recorded the block's own output (a hook on ViTLayer, Dinov2Layer...), which lacks Mona's
            # additions; hidden states (and backbones' feature maps built from them) must be the adapted stream.
            recorded[-1] = out[0] if isinstance(out, tuple) else out
        return out

    def __repr__(self) -> str:
        return "mona." + super().__repr__()


class TokenGrid:
    """The patch grid of the current forward pass, read off the patch projection's output.

    Plain ViTs run every block on the same grid, which only the input image determines (so
    non-square inputs with interpolated position embeddings work); ``MonaModel`` puts ``record`` as
    a forward hook on the patch-embedding convolution for all of the model's Mona layers, or ``record_shapes`` on the
    embeddings of a model whose images each have their own grid (a list of grids, one per image).
    """

    def __init__(self) -> None:
        self.size: tuple[int, int] | list[tuple[int, int]] | None = None

    def record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.size = (int(output.shape[-2]), int(output.shape[-1]))

    def record_shapes(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """One grid per image: the ``spatial_shapes`` the embeddings are called with (SigLIP 2)."""
        shapes = kwargs["spatial_shapes"] if "spatial_shapes" in kwargs else args[1]
        self.size = [(int(height), int(width)) for height, width in shapes.tolist()]
