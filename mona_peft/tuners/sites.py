"""The adapters MiMi can shrink ("sites"): what every kind shares, and the structured shrink of Linear layers.

A method whose adapters MiMi can shrink declares its :class:`AdapterSite` subclass in its ``MethodSpec``
(``site=``); :mod:`mona_peft.mimi` finds, scores and shrinks the sites through those declarations. The importance
score and what each neuron owns are explained in :mod:`mona_peft.mimi.sites`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: How a kept-neuron index tensor maps an old parameter (or its optimizer moment) to the new, smaller one.
Slicer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Replacement:
    """A parameter replaced by a smaller one; ``slicer`` maps the old parameter's tensors (moments) to the new."""

    old: nn.Parameter
    new: nn.Parameter
    slicer: Slicer


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _rows(keep: torch.Tensor) -> Slicer:
    return lambda tensor: tensor.index_select(0, keep.to(tensor.device))


def _columns(keep: torch.Tensor) -> Slicer:
    return lambda tensor: tensor.index_select(1, keep.to(tensor.device))


def _rows_and_columns(keep: torch.Tensor) -> Slicer:
    return lambda tensor: tensor.index_select(0, keep.to(tensor.device)).index_select(1, keep.to(tensor.device))


def _rebuilt_like(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _replace_parameters(module: nn.Module, slicers: dict[str, Slicer]) -> list[Replacement]:
    """Swap ``module``'s named parameters for sliced copies (new objects) in place; return the replacements."""
    replaced = []
    for name, slicer in slicers.items():
        old = getattr(module, name)
        new = _rebuilt_like(old, slicer(old.data))
        setattr(module, name, new)
        replaced.append(Replacement(old, new, slicer))
    return replaced


def _shrink_linear(layer: nn.Linear, keep: torch.Tensor, hidden_is_output: bool) -> list[Replacement]:
    """Keep ``keep`` of the hidden neurons of a down (hidden = outputs) or up (hidden = inputs) projection."""
    if hidden_is_output:
        replaced = _replace_parameters(layer, {"weight": _rows(keep), "bias": _rows(keep)})
        layer.out_features = len(keep)
    else:
        replaced = _replace_parameters(layer, {"weight": _columns(keep)})
        if layer.bias is not None:  # shared by all neurons: unchanged values, but kept as its own object
            replaced += _replace_parameters(layer, {"bias": _identity})
        layer.in_features = len(keep)
    return replaced


class AdapterSite:
    """One adapter with one hidden layer that MiMi can score, shrink and remove.

    ``name`` is the layer's module name in the base model; ``key`` names the site in the adapter config's
    ``inner_dim_pattern`` (an escaped, exact regex).
    """

    kind = ""
    #: The tuner layer class that holds this kind of adapter.
    layer_class: type[nn.Module] = nn.Module

    @classmethod
    def sites_of(cls, layer: nn.Module, adapter: str, name: str) -> list[AdapterSite]:
        """The adapters named ``adapter`` that ``layer`` (a ``layer_class`` module named ``name``) holds."""
        raise NotImplementedError

    def __init__(self, layer: nn.Module, adapter: str, name: str) -> None:
        self.layer = layer
        self.adapter = adapter
        self.name = name

    @property
    def key(self) -> str:
        return re.escape(self.name)

    @property
    def size(self) -> int:
        """Number of hidden neurons."""
        raise NotImplementedError

    def owned(self, size: int) -> int:
        """Parameters each neuron owns when the adapter has ``size`` neurons."""
        raise NotImplementedError

    def params(self, size: int) -> int:
        """Parameters of the whole adapter with ``size`` neurons (0 when ``size`` is 0: the adapter is removed)."""
        raise NotImplementedError

    def roles(self) -> dict[str, tuple[torch.Tensor, int]]:
        """Per-neuron L1 norm of each kind of owned parameter, ``{role: (l1 of shape (size,), count per neuron)}``."""
        raise NotImplementedError

    def l1(self) -> torch.Tensor:
        """Per-neuron L1 norm of the owned parameters, shape ``(size,)``."""
        with torch.no_grad():
            return sum(l1.float().cpu() for l1, _ in self.roles().values())

    def scores(self, normalize: bool = True, role_scales: dict[str, float] | None = None) -> torch.Tensor:
        """MiMi's importance of each hidden neuron (mean absolute owned parameter; the L1 sum without ``normalize``).

        ``role_scales`` (see :func:`role_scales`) first divides each kind of parameter by its typical magnitude.
        """
        if role_scales is None:
            l1 = self.l1()
        else:
            with torch.no_grad():
                l1 = sum(v.float().cpu() / role_scales[role] for role, (v, _) in self.roles().items())
        return l1 / self.owned(self.size) if normalize else l1

    def shrink(self, keep: torch.Tensor) -> list[Replacement]:
        """Keep only the neurons ``keep`` (sorted indices, at least one); returns the replaced parameters."""
        raise NotImplementedError

    def remove(self) -> list[nn.Parameter]:
        """Remove this adapter from its layer; returns its parameters."""
        removed = []
        for attribute in self.layer.adapter_layer_names:
            modules = getattr(self.layer, attribute)
            if self._owns(attribute) and self.adapter in modules:
                removed += list(modules[self.adapter].parameters())
                del modules[self.adapter]
        return removed

    def _owns(self, attribute: str) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, adapter={self.adapter!r}, size={self.size})"
