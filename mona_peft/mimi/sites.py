"""The adapters MiMi can shrink ("sites"), their neurons' importance scores, and the structured shrink itself.

A *site* is one adapter with one hidden layer: a Houlsby adapter on one Linear layer, or one Mona (a block has two,
after the attention and after the MLP). Its hidden neurons are the bottleneck's channels.

Importance score (MiMi, Marouf et al., "Mini but Mighty: Finetuning ViTs with Mini Adapters", eq. 3): the L1 norm of
the weights that belong to hidden neuron ``i`` (its down-projection row, its up-projection column) divided by how
many parameters that neuron owns. Dividing by the count makes neurons of adapters of different widths comparable, so
one ranking can run across all adapters (a neuron of a 192-wide block is not favoured for having more weights).
A neuron whose owned weights are all zero computes nothing: removing it leaves the adapter's output unchanged, which
is why a small score marks a neuron that is safe to remove.

What neuron ``i`` owns:

- Houlsby adapter ``x -> up(act(down(x)))`` of width ``C`` and ``r`` neurons: row ``i`` of the down projection and
  its bias (a Linear is an affine map; its bias is one more column of that row), column ``i`` of the up projection:
  ``2C + 1`` parameters. The up projection's bias is shared by all neurons (it goes when the whole adapter goes).
- Mona ``x -> up(gelu(pw(dw(down(norm(x))))))`` (see ``mona_peft.tuners.mona``): as above (down row + bias, up column),
  plus everything of channel ``i`` inside the multi-cognitive filter. The depthwise convolutions never mix channels,
  so channel ``i``'s kernel and bias in each of them are neuron ``i``'s alone (``sum(k*k) + len(kernel_sizes)``
  parameters for kernels ``(3, 5, 7)``: 83 + 3). The 1x1 convolution ``pw`` mixes channels: its row ``i``
  (``pw[i, :]``, what flows *into* channel ``i``, and its bias ``i``) and its column ``i`` (``pw[:, i]``, what channel
  ``i`` sends to the other channels) both disappear when channel ``i`` is removed, so neuron ``i`` owns both (the
  diagonal entry counted once): ``2r - 1 + 1`` parameters. Without the column, a neuron with a zero down row and up
  column could still feed the others through ``pw`` (its depthwise bias makes it non-zero), so removing it would
  change the output. In all ``2C + 2 + sum(k*k) + len(kernel_sizes) + 2r - 1`` parameters (``r`` = the Mona's current
  width, so the count shrinks as the Mona does). The scaled LayerNorm and the up bias are shared by the neurons.

The score is therefore the mean absolute value of the parameters the neuron owns; ``normalize=False`` gives the plain
L1 sum (the paper's ablation without the normalisation).

Shrinking is structured: the Linear layers, the depthwise kernels and the 1x1 convolution are rebuilt smaller with
the kept rows/columns/channels (new parameter objects, fewer FLOPs, smaller checkpoints). An adapter left with no
neuron is removed from its layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..tuners.houlsby import HoulsbyLayer
from ..tuners.mona.layer import SITES, MonaLayer, MultiCognitiveFilter

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


class HoulsbySite(AdapterSite):
    """A Houlsby adapter ``up(act(down(h)))`` on one Linear layer's output."""

    kind = "houlsby"

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


class MonaSite(AdapterSite):
    """One Mona (``site`` ``"attn"`` or ``"mlp"``) of a block."""

    kind = "mona"

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


def role_scales(sites: list[AdapterSite]) -> dict[str, float]:
    """Mean absolute value of each kind of owned parameter over all neurons of ``sites`` (the "balanced" score).

    Mona's parameters live at different scales: its Linear layers start trunc-normal(std 0.02) (mean ``|w|`` about
    0.016), its depthwise and 1x1 convolutions with PyTorch's default init (mean ``|w|`` 0.06-0.17). MiMi's plain
    score (the mean ``|w|`` of a neuron's owned parameters) then mostly measures which *mix* of parameters a neuron
    owns: the convolution parameters are a larger share of a neuron's parameters in a narrow block (``2C`` Linear
    entries vs ``sum(k*k) + 2r + ...`` convolution entries), so narrow blocks' neurons score higher whatever they
    learned. Dividing each kind by its mean magnitude first compares neurons on equal footing.
    """
    totals: dict[str, list[float]] = {}
    with torch.no_grad():
        for site in sites:
            for role, (l1, count) in site.roles().items():
                entry = totals.setdefault(role, [0.0, 0])
                entry[0] += float(l1.sum())
                entry[1] += count * len(l1)
    return {role: (total / count if total > 0 else 1.0) for role, (total, count) in totals.items()}


def find_sites(model: nn.Module, adapter_name: str) -> list[AdapterSite]:
    """Every Mona and Houlsby adapter named ``adapter_name`` in ``model``, in module order.

    ``model`` is a ``PeftModel`` (or its tuner); names are relative to the base model, as in the adapter config.
    """
    root = _base_model(model)
    sites: list[AdapterSite] = []
    for name, module in root.named_modules():
        if isinstance(module, MonaLayer):
            sites += [MonaSite(module, adapter_name, name, s) for s in SITES if module.has_mona(adapter_name, s)]
        elif isinstance(module, HoulsbyLayer) and adapter_name in module.houlsby_down:
            sites.append(HoulsbySite(module, adapter_name, name))
    return sites


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a ``PeftModel`` (``model.base_model.model``) or a tuner (``tuner.model``)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    if isinstance(model, PeftModel):
        model = model.base_model
    if isinstance(model, BaseTuner):
        model = model.model
    return model


def unwrap_empty_layers(model: nn.Module) -> list[str]:
    """Put back the plain module wherever a Mona/Houlsby layer no longer holds any adapter; returns their names.

    This is the structure ``PeftModel.from_pretrained`` builds from a config that gives such a module width 0.
    """
    root = _base_model(model)
    unwrapped = []
    for name, module in list(root.named_modules()):
        if not isinstance(module, (MonaLayer, HoulsbyLayer)):
            continue
        if any(len(getattr(module, attribute)) for attribute in module.adapter_layer_names):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        base = module.unload_and_optionally_merge_module(merge=False, safe_merge=False, adapter_names=None)
        setattr(parent, child, base)
        unwrapped.append(name)
    return unwrapped
