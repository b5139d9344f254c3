"""VPT's prompt tokens and the tuner layer that adds them to one transformer block.

Two layouts (``ArchitectureSpec.prompt_layout``):

``"sequence"`` (ViT, DeiT, DINOv2, DINOv2 with registers): the prompts ride in the hidden states, right after the
prefix tokens. The layer of the first adapted block inserts them; with VPT-deep the layer of every later adapted block
replaces the incoming prompt outputs by its own set; the layer of the backbone's last block strips them, so the final
norm, pooling and head see the model's own token layout (DINOv2's mean over patch tokens never includes prompts).

``"windows"`` (Swin): the stage reshapes hidden states onto the patch grid between blocks, so the prompts travel beside
them (a ``PromptStream`` shared by the model's VPT layers, and explicit inputs/outputs of each checkpointed block). In
every block they join each attention window as extra tokens, with zero relative-position bias and no shift mask; their
attention outputs are averaged over the windows of their image, then they go through the block's residual and MLP
like any token. At a patch merging they are merged like a token whose 2x2 neighbourhood is four copies of itself (the
official VPT code does the same), unless the next block replaces them (VPT-deep).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import ResolvedArchitecture
from ..tuner_utils import BASE_ADAPTER_NAME, WrappingLayer

try:  # transformers >= 5 records `output_hidden_states` with forward hooks on the block classes
    from transformers.utils import output_capturing as _output_capturing
except ImportError:  # pragma: no cover
    _output_capturing = None

#: What a block does with an adapter's prompts: nothing yet, insert its own, replace the incoming ones by its own
#: (VPT-deep), or carry the incoming ones.
MODES = ("off", "insert", "replace", "carry")
#: What happens to the prompts after the block: passed on, merged by the stage's patch merging (Swin), dropped (the
#: next block replaces them anyway), or removed for good (the backbone's last block).
HANDOFFS = ("keep", "merge", "drop", "end")


def prompt_init_bound(patch_size: Any, embedding_width: int) -> float:
    """The paper's uniform bound ``sqrt(6 / (3 * patch_h * patch_w + d))`` (Xavier-uniform of a patch projection)."""
    if isinstance(patch_size, (list, tuple)):
        patch_h, patch_w = int(patch_size[0]), int(patch_size[-1])
    else:
        patch_h = patch_w = int(patch_size)
    return math.sqrt(6.0 / (3 * patch_h * patch_w + embedding_width))


class PromptEmbedding(nn.Module):
    """One set of prompt tokens: ``weight`` of shape ``(num_prompts, width)``, in a leaf module (FSDP-friendly)."""

    def __init__(self, num_prompts: int, width: int, bound: float) -> None:
        super().__init__()
        self.bound = bound
        self.weight = nn.Parameter(torch.empty(num_prompts, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -self.bound, self.bound)

    def extra_repr(self) -> str:
        return f"num_prompts={self.weight.shape[0]}, width={self.weight.shape[1]}"


class PromptStream:
    """Carries Swin's prompt tokens from one VPT layer to the next within one forward pass."""

    def __init__(self) -> None:
        self.prompts: torch.Tensor | None = None


@dataclass
class _Plan:
    """What one block does in this forward pass."""

    mode: str
    handoff: str
    num_prompts: int
    adapters: list[str]
    #: per row, an index into ``adapters`` (``len(adapters)`` for ``__base__`` rows); None: one adapter for all rows
    rows: torch.Tensor | None = None

    @property
    def base_rows(self) -> torch.Tensor | None:
        if self.rows is None:
            return None
        base = self.rows == len(self.adapters)
        return base if bool(base.any()) else None


def _recorded_hidden_states() -> list | None:
    """The list that transformers' ``output_hidden_states`` capture is appending to right now, if any."""
    collector = getattr(_output_capturing, "_active_collector", None)
    collected = collector.get() if collector is not None else None
    states = collected.get("hidden_states") if isinstance(collected, dict) else None
    return states if isinstance(states, list) else None


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out: Any, hidden: torch.Tensor) -> Any:
    return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


class VPTLayer(nn.Module, WrappingLayer):
    """Wraps one transformer block; adds, replaces, carries or removes VPT prompt tokens around it.

    Every block of the backbone is wrapped (blocks without prompts of their own carry the incoming ones), so the
    prompts can be removed after the last block whatever ``target_modules`` selects. Per-adapter state is flat:
    ``vpt_prompts[adapter]`` is a ``PromptEmbedding`` (only on blocks that own prompts), the rest are plain dicts
    filled on every layer. ``VPTModel`` assigns each layer's mode and handoff once all blocks are wrapped.
    """

    method_name = "VPT"
    merge_reason = "prompts are extra input tokens, not a change of weights"
    adapter_layer_names = ("vpt_prompts",)
    other_param_names = ("vpt_dropout", "vpt_num_prompts", "vpt_mode", "vpt_handoff")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        architecture: ResolvedArchitecture,
        stream: PromptStream,
        own_prompts: bool,
        bound: float,
    ) -> None:
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.vpt_prompts = nn.ModuleDict()
        self.vpt_dropout = nn.ModuleDict()
        self.vpt_num_prompts: dict[str, int] = {}
        self.vpt_mode: dict[str, str] = {}
        self.vpt_handoff: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.architecture = architecture
        self.layout = architecture.spec.prompt_layout
        self.stream = stream
        self.width = self._block_width(base_layer)
        # The stage's patch merging (Swin), set by VPTModel; kept out of the module tree (it belongs to the stage).
        self._downsample: tuple[nn.Module, ...] = ()
        self._last_in_stage = False
        self._pending: dict[str, Any] | None = None
        self._hooks = []
        if self.layout == "windows":
            names = architecture.spec.window_modules
            attention = base_layer.get_submodule(names.attention)
            bias = base_layer.get_submodule(names.relative_position_bias)
            self._hooks = [
                attention.register_forward_pre_hook(self._attention_pre_hook, with_kwargs=True),
                bias.register_forward_hook(self._bias_hook),
                attention.register_forward_hook(self._attention_hook),
            ]
        self.update_layer(adapter_name, config, own_prompts, bound)
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, config: Any, own_prompts: bool, bound: float) -> None:
        """Register ``adapter_name`` on this block; create its prompts if this block owns a set."""
        if own_prompts:
            self.vpt_prompts[adapter_name] = PromptEmbedding(config.num_prompts, self.width, bound)
        self.vpt_dropout[adapter_name] = nn.Dropout(config.prompt_dropout)
        self.vpt_num_prompts[adapter_name] = config.num_prompts
        self.vpt_mode.setdefault(adapter_name, "off")
        self.vpt_handoff.setdefault(adapter_name, "keep")
        self._finish_update(adapter_name)

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- planning -----------------------------------------------------------------------------------------------
    def _plan(self, routing: list[str] | None) -> _Plan | None:
        if routing is None:
            if self.disable_adapters:
                return None
            active = [name for name in self.active_adapters if name in self.vpt_mode]
            if not active:
                return None
            if len(active) > 1:
                raise ValueError(
                    f"VPT applies one adapter at a time, but {active} are active; call set_adapter() with one name, "
                    "or route samples to adapters with `adapter_names=`."
                )
            name = active[0]
            if self.vpt_mode[name] == "off":
                return None
            return _Plan(self.vpt_mode[name], self.vpt_handoff[name], self.vpt_num_prompts[name], [name])
        names = list(dict.fromkeys(name for name in routing if name != BASE_ADAPTER_NAME))
        if not names:
            return None
        unknown = [name for name in names if name not in self.vpt_mode]
        if unknown:
            raise ValueError(f"Unknown VPT adapter(s) {unknown} in adapter_names.")
        layouts = {(self.vpt_mode[n], self.vpt_handoff[n], self.vpt_num_prompts[n]) for n in names}
        if len(layouts) > 1:
            raise ValueError(
                f"Adapters {names} put different prompt layouts into one mixed batch (num_prompts, deep or target "
                "blocks differ); a batch can only mix VPT adapters of the same layout (and '__base__' rows)."
            )
        mode, handoff, num_prompts = layouts.pop()
        if mode == "off":
            return None
        index = {name: i for i, name in enumerate(names)}
        rows = torch.tensor([index.get(name, len(names)) for name in routing], dtype=torch.long)
        return _Plan(mode, handoff, num_prompts, names, rows)

    def _own_prompts(self, plan: _Plan, batch: int, like: torch.Tensor) -> torch.Tensor:
        """This block's prompts for every row, ``(batch, num_prompts, width)`` (zeros for ``__base__`` rows)."""
        if plan.rows is None:
            name = plan.adapters[0]
            weight = self.vpt_prompts[name].weight
            prompts = weight.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)
            return self.vpt_dropout[name](prompts)
        if len(plan.rows) != batch:
            raise ValueError(f"adapter_names has {len(plan.rows)} entries for a batch of {batch}.")
        weights = [self.vpt_prompts[name].weight.to(like.dtype) for name in plan.adapters]
        table = torch.stack(weights + [torch.zeros_like(weights[0])])
        return table[plan.rows.to(table.device)]

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any):
        routing = kwargs.pop("adapter_names", None)
        plan = self._plan(routing)
        if plan is None:
            return self.base_layer(*args, **kwargs)
        if self.layout == "windows":
            return self._forward_windows(plan, args, kwargs)
        return self._forward_sequence(plan, args, kwargs)

    # sequence layout (plain ViTs)
    def _forward_sequence(self, plan: _Plan, args: tuple, kwargs: dict):
        hidden = args[0]
        batch = hidden.shape[0]
        start, count = self.architecture.num_prefix_tokens, plan.num_prompts
        if plan.mode in ("insert", "replace"):
            prompts = self._own_prompts(plan, batch, hidden).to(hidden.device)
            rest = hidden[:, start:] if plan.mode == "insert" else hidden[:, start + count :]
            hidden = torch.cat([hidden[:, :start], prompts, rest], dim=1)
        args = (hidden,) + tuple(args[1:])
        if len(args) > 1:
            args = (hidden, self._sequence_mask(args[1], plan, hidden)) + tuple(args[2:])
        else:
            mask_argument = self.architecture.spec.attention_mask_argument
            if kwargs.get(mask_argument) is not None or plan.base_rows is not None:
                kwargs[mask_argument] = self._sequence_mask(kwargs.get(mask_argument), plan, hidden)

        recorded = _recorded_hidden_states()
        num_recorded = None if recorded is None else len(recorded)
        out = self.base_layer(*args, **kwargs)
        strip = partial(self._strip, start=start, count=count, length=hidden.shape[1])
        if recorded is not None:
            # transformers recorded the block's input (first block) and output with the prompts; hidden states (and
            # backbones' feature maps built from them) keep the model's own token layout.
            for i in range(num_recorded, len(recorded)):
                if isinstance(recorded[i], torch.Tensor):
                    recorded[i] = strip(recorded[i])
        if plan.handoff == "end":
            out = _replace_first(out, strip(_first(out)))
        return out

    @staticmethod
    def _strip(x: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != length:
            return x
        return torch.cat([x[:, :start], x[:, start + count :]], dim=1)

    def _sequence_mask(self, mask: torch.Tensor | None, plan: _Plan, hidden: torch.Tensor) -> torch.Tensor | None:
        """The model's attention mask with the prompt positions added, and masked as keys for ``__base__`` rows.

        Every token may attend to the prompts; the prompts attend to what the first token (CLS) may attend to (for
        transformers' padding masks, which depend on the key only, that is the same mask as every token's).
        """
        base_rows = plan.base_rows
        if mask is None and base_rows is None:
            return None
        batch, length, _ = hidden.shape
        start, count = self.architecture.num_prefix_tokens, plan.num_prompts
        lowest = torch.finfo(hidden.dtype).min
        if mask is None:
            mask = torch.zeros(batch, 1, length, length, dtype=hidden.dtype, device=hidden.device)
        else:
            if mask.dim() != 4:
                raise ValueError(f"VPT expects the block's attention mask as 4-D, got shape {tuple(mask.shape)}.")
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill(~mask, lowest)
            if mask.shape[-1] == length - count:  # built by the model for the sequence without prompts
                pad = mask.new_zeros(*mask.shape[:-1], count)
                mask = torch.cat([mask[..., :start], pad, mask[..., start:]], dim=-1)
                if mask.shape[-2] == length - count:  # prompts see what the first (CLS) token sees
                    rows = mask[..., :1, :].expand(*mask.shape[:-2], count, mask.shape[-1])
                    mask = torch.cat([mask[..., :start, :], rows, mask[..., start:, :]], dim=-2)
            mask = mask.expand(batch, mask.shape[1], length, length)
        if base_rows is not None:
            columns = torch.zeros(batch, length, dtype=torch.bool, device=mask.device)
            columns[:, start : start + count] = base_rows.to(mask.device)[:, None]
            mask = mask.masked_fill(columns[:, None, None, :], lowest)
        return mask

    # windows layout (Swin)
    def _forward_windows(self, plan: _Plan, args: tuple, kwargs: dict):
        hidden = args[0]
        batch = hidden.shape[0]
        if plan.mode in ("insert", "replace"):
            prompts = self._own_prompts(plan, batch, hidden).to(hidden.device)
        else:
            prompts = self.stream.prompts
            if prompts is None or prompts.shape[0] != batch or prompts.shape[-1] != self.width:
                raise RuntimeError(
                    "VPT found no prompts from the previous Swin block; the blocks must run in order, in one forward "
                    "pass."
                )
        options = {"base_rows": plan.base_rows, "carry_on": plan.handoff in ("keep", "merge")}
        block = self.base_layer
        if getattr(block, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
            # The prompts are an explicit input and output of the checkpointed region, so both checkpointing modes
            # recompute and differentiate them (the stage's own checkpointing is suspended by VPTModel).
            function = partial(self._windowed_block, checkpointed=True, **options, **kwargs)
            result = block._gradient_checkpointing_func(function, prompts, *args)
        else:
            result = self._windowed_block(prompts, *args, **options, **kwargs)
        *out, prompts = result
        out = tuple(out) if len(out) > 1 else out[0]
        if plan.handoff == "keep":
            self.stream.prompts = prompts
        elif plan.handoff == "merge":
            self.stream.prompts = self._merge_prompts(prompts)
        else:
            self.stream.prompts = None
        return out

    def _windowed_block(
        self,
        prompts: torch.Tensor,
        *args: Any,
        base_rows: torch.Tensor | None = None,
        carry_on: bool = True,
        checkpointed: bool = False,
        **kwargs: Any,
    ) -> tuple:
        """The block's outputs, then the prompts' outputs (None when no later block reads them)."""
        names = self.architecture.spec.window_modules
        block = self.base_layer
        self._pending = {
            "prompts": block.get_submodule(names.norm_before)(prompts),
            "batch": prompts.shape[0],
            "base_rows": base_rows,
            "attention": None,
        }
        try:
            if checkpointed:  # call the block's own forward, not its checkpointing wrapper
                out = inspect.unwrap(type(block).forward)(block, *args, **kwargs)
            else:
                out = block(*args, **kwargs)
            attention = self._pending["attention"]
        finally:
            self._pending = None
        if attention is None:
            raise RuntimeError(
                f"VPT's hooks on '{names.attention}' did not run; the {type(block).__name__} forward no longer "
                "matches mona_peft.tuners.architectures."
            )
        out = out if isinstance(out, tuple) else (out,)
        if not carry_on:
            return (*out, None)
        dropout, drop_path = block.get_submodule(names.dropout), block.get_submodule(names.drop_path)
        mlp, norm_after = block.get_submodule(names.mlp), block.get_submodule(names.norm_after)
        # The block's residual and MLP, as for every token: x = x + drop_path(dropout(attn)); x = x + dropout(mlp(..)).
        prompts = prompts + drop_path(dropout(attention.to(prompts.dtype)))
        prompts = prompts + dropout(mlp(norm_after(prompts)))
        return (*out, prompts)

    def _attention_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        pending = self._pending
        if pending is None:
            return None
        windows = args[0]
        batch = pending["batch"]
        num_windows = windows.shape[0] // batch
        prompts = pending["prompts"].to(windows.dtype)
        count, width = prompts.shape[1], prompts.shape[2]
        # windows are batch-major (window_partition): row b * num_windows + w
        tiled = prompts.unsqueeze(1).expand(batch, num_windows, count, width).reshape(-1, count, width)
        windows = torch.cat([tiled, windows], dim=1)
        pending["num_windows"], pending["num_prompts"] = num_windows, count
        # The shift mask: prompts see, and are seen by, every token of every window.
        if len(args) > 1 and args[1] is not None:
            args = (windows, F.pad(args[1], (count, 0, count, 0))) + tuple(args[2:])
        else:
            args = (windows,) + tuple(args[1:])
            if kwargs.get("attention_mask") is not None:
                kwargs["attention_mask"] = F.pad(kwargs["attention_mask"], (count, 0, count, 0))
        return args, kwargs

    def _bias_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        pending = self._pending
        if pending is None or "num_prompts" not in pending:
            return None
        count = pending["num_prompts"]
        bias = F.pad(output, (count, 0, count, 0))  # prompts have no relative position: zero bias
        base_rows = pending["base_rows"]
        if base_rows is not None:  # '__base__' rows of a mixed batch: no token may attend to their (dummy) prompts
            length = bias.shape[-1]
            columns = torch.zeros(pending["batch"], length, dtype=torch.bool, device=bias.device)
            columns[:, :count] = base_rows.to(bias.device)[:, None]
            columns = columns.repeat_interleave(pending["num_windows"], dim=0)
            bias = bias.masked_fill(columns[:, None, None, :], torch.finfo(bias.dtype).min)
        return bias

    def _attention_hook(self, module: nn.Module, args: tuple, output: tuple):
        pending = self._pending
        if pending is None or "num_prompts" not in pending:
            return None
        attention = output[0] if isinstance(output, tuple) else output
        count, batch, num_windows = pending["num_prompts"], pending["batch"], pending["num_windows"]
        prompt_out = attention[:, :count]
        pending["attention"] = prompt_out.reshape(batch, num_windows, count, prompt_out.shape[-1]).mean(dim=1)
        windows = attention[:, count:].contiguous()
        return (windows,) + tuple(output[1:]) if isinstance(output, tuple) else windows

    def _merge_prompts(self, prompts: torch.Tensor) -> torch.Tensor:
        """The stage's patch merging applied to each prompt as if its 2x2 neighbourhood were four copies of it."""
        if not self._downsample:
            raise RuntimeError("VPT was asked to merge prompts at a stage without patch merging.")
        names = self.architecture.spec.window_modules
        downsample = self._downsample[0]
        merged = torch.cat([prompts] * 4, dim=-1)
        merged = downsample.get_submodule(names.merge_norm)(merged)
        return downsample.get_submodule(names.merge_reduction)(merged)

    def __repr__(self) -> str:
        return "vpt." + super().__repr__()
