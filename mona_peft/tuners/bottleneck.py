"""Machinery shared by the bottleneck adapters that PEFT lacks: Houlsby's adapter and AdaptFormer.

Both put a small ``up(act(down(.)))`` module next to one module of every transformer block; they differ only in
where its input comes from and where its output goes. ``BottleneckLayer`` keeps each adapter's pieces in flat
``ModuleDict``s named with the method's prefix (``houlsby_down[adapter]``, ``houlsby_up[adapter]``) as PEFT's
save/load and adapter renaming expect, with the down and up projections as plain ``nn.Linear`` (MiMi prunes their
hidden neurons). ``BottleneckModel`` finds the target modules through ``mona_peft.tuners.architectures``, refuses to
merge (the adapters are non-linear), gives ``unload()`` the untouched base modules back, and routes mixed-adapter
batches (``adapter_names=[...]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.utils.other import get_pattern_key
from torch import nn

from .architectures import ArchitectureSpec
from .tuner_utils import BASE_ADAPTER_NAME, WrappingLayer, WrappingTuner

#: In ``adapter_names=[...]``, the rows that run the base model without any adapter (PEFT's convention).


def inner_dim_for(config: Any, module_name: str) -> int:
    """The bottleneck width of the adapter at ``module_name``: ``config.inner_dim_pattern`` first, then ``inner_dim``.

    Keys of ``inner_dim_pattern`` are regexes matched against the end of the module name, as LoRA's ``rank_pattern``.
    """
    pattern = config.inner_dim_pattern or {}
    key = get_pattern_key(list(pattern), module_name)
    return int(pattern.get(key, config.inner_dim))


def kaiming_uniform_linear(layer: nn.Linear) -> nn.Linear:
    """PyTorch's default Linear weight init (kaiming-uniform, ``a=sqrt(5)``) with a zero bias."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    nn.init.zeros_(layer.bias)
    return layer


class BottleneckLayer(nn.Module, WrappingLayer):
    """A tuner layer holding one bottleneck ``up(act(down(.)))`` per adapter next to ``base_layer``.

    Subclasses set ``method`` (the prefix without ``_``), ``adapter_layer_names`` (``("<method>_down",
    "<method>_up")``), ``other_param_names``, and implement ``update_layer`` and ``forward``.
    """

    method: str = ""
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()
    merge_reason = "the bottleneck has a non-linearity"

    @property
    def method_name(self) -> str:
        return self.method

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, module_name: str, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict())
        self._disable_adapters = False
        self.merged_adapters = []
        self.module_name = module_name
        self.in_features, self.out_features = self._features(base_layer)
        self._setup(**kwargs)
        self.update_layer(adapter_name, config)
        self._active_adapter = adapter_name

    def _setup(self, **kwargs: Any) -> None:
        """Per-method state created before the first adapter (``kwargs`` come from the tuner's ``_layer_kwargs``)."""

    @staticmethod
    def _features(module: nn.Module) -> tuple[int, int]:
        if isinstance(module, nn.Linear):
            return module.in_features, module.out_features
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"Cannot find the width of {type(module).__name__}: it has no Linear layer.")
        return linears[0].in_features, linears[-1].out_features

    @property
    def down(self) -> nn.ModuleDict:
        return getattr(self, f"{self.method}_down")

    @property
    def up(self) -> nn.ModuleDict:
        return getattr(self, f"{self.method}_up")

    def _add_projections(self, adapter_name: str, in_features: int, inner_dim: int, out_features: int) -> None:
        self.down[adapter_name] = nn.Linear(in_features, inner_dim)
        self.up[adapter_name] = nn.Linear(inner_dim, out_features)

    def inner_dim(self, adapter_name: str) -> int:
        """The bottleneck width (hidden neurons) of ``adapter_name`` here."""
        return self.down[adapter_name].out_features

    def _adapters_to_apply(self) -> list[str]:
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if name in self.down]

    def _bottleneck(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``up(act(down(x)))`` of one adapter (subclasses add their activation, dropout and scale)."""
        raise NotImplementedError

    def _add_adapters(self, result: torch.Tensor, x: torch.Tensor, adapter_names: list[str] | None) -> torch.Tensor:
        """The wrapped module's ``result`` plus the adapters' output on ``x``: of each active adapter, or with
        ``adapter_names`` of each sample's own (mixed batches)."""
        if self.disable_adapters:
            return result
        if adapter_names is not None:
            return result + self._routed(adapter_names, x, result)
        for adapter in self._adapters_to_apply():
            result = result + self._bottleneck(adapter, x).to(result.dtype)
        return result

    def _routed(self, routing: list[str], x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-sample adapter contributions: sample ``i`` uses adapter ``routing[i]`` (zero for ``"__base__"``).

        Swin's attention runs on windows, ``num_windows`` consecutive rows per sample (sample-major), so a leading
        dimension that is a multiple of the batch size is read as that many rows per sample.
        """
        rows_per_sample, remainder = divmod(x.shape[0], len(routing))
        if remainder or not rows_per_sample:
            raise ValueError(
                f"adapter_names names {len(routing)} samples, but '{self.module_name}' sees {x.shape[0]} rows."
            )
        if rows_per_sample > 1:
            routing = [name for name in routing for _ in range(rows_per_sample)]
        delta = torch.zeros_like(like)
        for adapter in dict.fromkeys(routing):
            if adapter == BASE_ADAPTER_NAME or adapter not in self.down:
                continue
            rows = torch.tensor([i for i, r in enumerate(routing) if r == adapter], device=x.device, dtype=torch.long)
            delta[rows] = self._bottleneck(adapter, x[rows]).to(like.dtype)
        return delta

    def __repr__(self) -> str:
        return f"{self.method}." + super().__repr__()


class BottleneckModel(WrappingTuner):
    """A PEFT tuner that wraps modules named by the architecture registry with a ``BottleneckLayer``.

    Subclasses set ``prefix``, ``tuner_layer_cls``, ``display_name`` and ``default_target_names(spec)``, and may
    override ``_check_target`` and ``_layer_kwargs``.
    """

    display_name: str = ""

    @property
    def merge_error(self) -> str:
        return f"{self.display_name} adapters cannot be merged into the base model: the bottleneck has a non-linearity."

    @staticmethod
    def default_target_names(spec: ArchitectureSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def _default_target_modules(self) -> str:
        spec = self.architecture.spec
        return spec.pattern_in_blocks(*self.default_target_names(spec))

    def _check_target(self, target: nn.Module, current_key: str) -> None:
        """Raise a clear error when ``target`` cannot carry this adapter (any module can, unless a subclass says)."""

    def _layer_kwargs(self, peft_config: Any, current_key: str) -> dict[str, Any]:
        return {}

    def _new_layer(
        self, target: nn.Module, adapter_name: str, peft_config: Any, current_key: str
    ) -> BottleneckLayer | None:
        if getattr(peft_config, "inner_dim_pattern", None) and inner_dim_for(peft_config, current_key) == 0:
            return None  # width 0 (a MiMi-removed adapter): leave the module unwrapped
        return self.tuner_layer_cls(
            target, adapter_name, peft_config, current_key, **self._layer_kwargs(peft_config, current_key)
        )
