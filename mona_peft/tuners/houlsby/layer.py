"""The Houlsby adapter's tuner layer: ``h -> h + up(act(down(h)))`` on a Linear layer's output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..bottleneck import BottleneckLayer, inner_dim_for

#: Houlsby's code initialises both projections truncated-normal with this std (cut at two std).
INIT_STD = 1e-3


class HoulsbyLayer(BottleneckLayer):
    """Wraps a Linear layer (the attention or MLP output projection) and adds its adapters to its output.

    Several active adapters are applied one after another, each to the previous one's output.
    """

    method = "houlsby"
    adapter_layer_names = ("houlsby_down", "houlsby_up")
    other_param_names = ("houlsby_activation",)

    def _setup(self, **kwargs: Any) -> None:
        self.houlsby_activation = nn.ModuleDict()

    def update_layer(self, adapter_name: str, config: Any) -> None:
        """Create the adapter ``adapter_name`` on this layer's output."""
        width = self.out_features
        inner_dim = inner_dim_for(config, self.module_name)
        if inner_dim == 0:  # MiMi removed this adapter: nothing here, the layer skips it
            return
        self._add_projections(adapter_name, width, inner_dim, width)
        down, up = self.houlsby_down[adapter_name], self.houlsby_up[adapter_name]
        for layer in (down, up):
            nn.init.trunc_normal_(layer.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
            nn.init.zeros_(layer.bias)
        if config.init_weights == "identity":
            nn.init.zeros_(up.weight)
        self.houlsby_activation[adapter_name] = ACT2FN[config.activation]
        self._finish_update(adapter_name)

    def _bottleneck(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        down = self.houlsby_down[adapter_name]
        x = self._cast_input_dtype(x, down.weight.dtype)
        return self.houlsby_up[adapter_name](self.houlsby_activation[adapter_name](down(x)))

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any):
        result = self.base_layer(x, *args, **kwargs)
        return self._add_adapters(result, result, adapter_names)
