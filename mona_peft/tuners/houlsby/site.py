"""The Houlsby adapter as a MiMi site: each hidden neuron owns its down row (and bias) and its up column."""

from __future__ import annotations

import torch
from torch import nn

from ..sites import AdapterSite, Replacement, _shrink_linear
from .layer import HoulsbyLayer


class HoulsbySite(AdapterSite):
    """A Houlsby adapter ``up(act(down(h)))`` on one Linear layer's output."""

    kind = "houlsby"
    layer_class = HoulsbyLayer

    @classmethod
    def sites_of(cls, layer: HoulsbyLayer, adapter: str, name: str) -> list[AdapterSite]:
        return [cls(layer, adapter, name)] if adapter in layer.houlsby_down else []

    @property
    def down(self) -> nn.Linear:
        return self.layer.houlsby_down[self.adapter]

    @property
    def up(self) -> nn.Linear:
        return self.layer.houlsby_up[self.adapter]

    @property
    def size(self) -> int:
        return self.down.out_features

    def owned(self, size: int) -> int:
        return self.down.in_features + 1 + self.up.out_features

    def params(self, size: int) -> int:
        return size * self.owned(size) + self.up.out_features if size else 0

    def roles(self) -> dict[str, tuple[torch.Tensor, int]]:
        down, up = self.down, self.up
        return {
            "down": (down.weight.abs().sum(1) + down.bias.abs(), down.in_features + 1),
            "up": (up.weight.abs().sum(0), up.out_features),
        }

    def shrink(self, keep: torch.Tensor) -> list[Replacement]:
        return _shrink_linear(self.down, keep, hidden_is_output=True) + _shrink_linear(
            self.up, keep, hidden_is_output=False
        )

    def remove(self) -> list[nn.Parameter]:
        removed = super().remove()
        if self.adapter in self.layer.houlsby_activation:
            del self.layer.houlsby_activation[self.adapter]
        return removed
