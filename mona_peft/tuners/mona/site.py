"""Mona as a MiMi site (one per Mona of a block): what each hidden neuron owns is explained in
:mod:`mona_peft.mimi.sites`."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..sites import AdapterSite, Replacement, _replace_parameters, _rows, _rows_and_columns, _shrink_linear
from .layer import SITES, MonaLayer, MultiCognitiveFilter


class MonaSite(AdapterSite):
    """One Mona (``site`` ``"attn"`` or ``"mlp"``) of a block."""

    kind = "mona"
    layer_class = MonaLayer

    @classmethod
    def sites_of(cls, layer: MonaLayer, adapter: str, name: str) -> list[AdapterSite]:
        return [cls(layer, adapter, name, site) for site in SITES if layer.has_mona(adapter, site)]

    def __init__(self, layer: MonaLayer, adapter: str, name: str, site: str) -> None:
        super().__init__(layer, adapter, name)
        self.site = site

    @property
    def key(self) -> str:
        return re.escape(f"{self.name}.mona_{self.site}")

    def __repr__(self) -> str:
        return f"MonaSite({self.name!r}, site={self.site!r}, adapter={self.adapter!r}, size={self.size})"

    def _piece(self, piece: str) -> nn.Module:
        return getattr(self.layer, f"mona_{self.site}_{piece}")[self.adapter]

    def _owns(self, attribute: str) -> bool:
        return attribute.startswith(f"mona_{self.site}_")

    @property
    def size(self) -> int:
        return self._piece("down").out_features

    @property
    def channels(self) -> int:
        return self._piece("down").in_features

    def owned(self, size: int) -> int:
        kernels = self._piece("filter").kernel_sizes
        depthwise = sum(k * k for k in kernels) + len(kernels)
        # down row + bias, up column, the depthwise kernels and biases, 1x1 row + column (diagonal once) + bias
        return 2 * self.channels + 1 + depthwise + (2 * size - 1) + 1

    def params(self, size: int) -> int:
        if not size:
            return 0
        kernels = self._piece("filter").kernel_sizes
        channels = self.channels
        norm = sum(p.numel() for p in self._piece("norm").parameters())
        down = size * (channels + 1)
        conv = size * (sum(k * k for k in kernels) + len(kernels)) + size * size + size
        up = size * channels + channels
        return norm + down + conv + up

    def roles(self) -> dict[str, tuple[torch.Tensor, int]]:
        down, conv, up = self._piece("down"), self._piece("filter"), self._piece("up")
        roles = {
            "down": (down.weight.abs().sum(1) + down.bias.abs(), self.channels + 1),
            "up": (up.weight.abs().sum(0), self.channels),
        }
        for k in conv.kernel_sizes:
            l1 = getattr(conv, f"dw{k}_weight").abs().sum((1, 2, 3)) + getattr(conv, f"dw{k}_bias").abs()
            roles[f"dw{k}"] = (l1, k * k + 1)
        pointwise = conv.pw_weight.abs()[:, :, 0, 0]
        l1 = pointwise.sum(1) + pointwise.sum(0) - pointwise.diagonal() + conv.pw_bias.abs()
        roles["pw"] = (l1, 2 * self.size)
        return roles

    def shrink(self, keep: torch.Tensor) -> list[Replacement]:
        replaced = _shrink_linear(self._piece("down"), keep, hidden_is_output=True)
        replaced += _shrink_linear(self._piece("up"), keep, hidden_is_output=False)
        conv: MultiCognitiveFilter = self._piece("filter")
        slicers = {}
        for k in conv.kernel_sizes:
            slicers[f"dw{k}_weight"] = _rows(keep)
            slicers[f"dw{k}_bias"] = _rows(keep)
        slicers["pw_weight"] = _rows_and_columns(keep)
        slicers["pw_bias"] = _rows(keep)
        replaced += _replace_parameters(conv, slicers)
        conv.channels = len(keep)
        return replaced
