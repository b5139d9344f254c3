"""AdaptFormer's tuner layer: ``mlp(x) + scale * up(dropout(relu(down(x))))``, wrapping the MLP."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..bottleneck import BottleneckLayer, inner_dim_for, kaiming_uniform_linear


class AdaptFormerLayer(BottleneckLayer):
    """Wraps an MLP module and adds the scaled outputs of its active adapters (in parallel) to the MLP's output.

    When the MLP is two sibling modules (Swin v2: ``intermediate``, then ``output``), the layer wraps the second and
    a forward pre-hook on the first (``input_module``) hands it the MLP's input.
    """

    method = "adaptformer"
    adapter_layer_names = ("adaptformer_down", "adaptformer_up")
    other_param_names = ("adaptformer_dropout", "adaptformer_scale")

    def _setup(self, input_module: nn.Module | None = None, **kwargs: Any) -> None:
        self.adaptformer_dropout = nn.ModuleDict()
        self.adaptformer_scale: dict[str, float] = {}
        self._mlp_input: torch.Tensor | None = None
        self._input_hook = None
        if input_module is not None:
            self.in_features = self._features(input_module)[0]
            self._input_hook = input_module.register_forward_pre_hook(self._record_input)

    def _record_input(self, module: nn.Module, args: tuple) -> None:
        self._mlp_input = args[0]

    def update_layer(self, adapter_name: str, config: Any) -> None:
        """Create the adapter ``adapter_name`` parallel to this MLP."""
        inner_dim = inner_dim_for(config, self.module_name)
        self._add_projections(adapter_name, self.in_features, inner_dim, self.out_features)
        down, up = self.adaptformer_down[adapter_name], self.adaptformer_up[adapter_name]
        if config.init_weights == "lora":
            kaiming_uniform_linear(down)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        else:
            for layer in (down, up):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.adaptformer_dropout[adapter_name] = nn.Dropout(config.dropout)
        self.adaptformer_scale[adapter_name] = float(config.scale)
        self._finish_update(adapter_name)

    def _bottleneck(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        down = self.adaptformer_down[adapter_name]
        x = self._cast_input_dtype(x, down.weight.dtype)
        hidden = self.adaptformer_dropout[adapter_name](F.relu(down(x)))
        return self.adaptformer_up[adapter_name](hidden) * self.adaptformer_scale[adapter_name]

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any):
        if self._input_hook is None:
            x = args[0] if args else kwargs["hidden_states"]
        else:
            x, self._mlp_input = self._mlp_input, None
            if x is None:
                raise RuntimeError(
                    f"AdaptFormer at '{self.module_name}' did not see the MLP's input: the module that starts the MLP "
                    "did not run first, so the block no longer matches mona_peft.tuners.architectures (mlp_input)."
                )
        return self._add_adapters(self.base_layer(*args, **kwargs), x, adapter_names)

    def _remove_hooks(self) -> None:
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None
