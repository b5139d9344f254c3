"""The adapters MiMi can shrink ("sites"), their neurons' importance scores, and the structured shrink itself.

Each shrinkable method declares its site class (``MethodSpec.site``:
:class:`~mona_peft.tuners.houlsby.site.HoulsbySite`, :class:`~mona_peft.tuners.mona.site.MonaSite`); this module finds
the sites through those declarations.

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

import torch
from torch import nn

from ..tuners.registry import methods
from ..tuners.sites import AdapterSite, Replacement

__all__ = ["AdapterSite", "Replacement", "find_sites", "role_scales", "site_kinds", "unwrap_empty_layers"]


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
    """Every shrinkable adapter (Mona, Houlsby, ...: see :func:`site_kinds`) named ``adapter_name`` in ``model``, in
    module order.

    ``model`` is a ``PeftModel`` (or its tuner); names are relative to the base model, as in the adapter config.
    """
    kinds = site_kinds()
    sites: list[AdapterSite] = []
    for name, module in _base_model(model).named_modules():
        kind = next((kind for kind in kinds if isinstance(module, kind.layer_class)), None)
        if kind is not None:
            sites += kind.sites_of(module, adapter_name, name)
    return sites


def site_kinds() -> list[type[AdapterSite]]:
    """The site class of every method that declares one (``MethodSpec.site``): the adapters MiMi can shrink."""
    return [spec.site for spec in methods().values() if spec.site is not None]


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
    """Put back the plain module wherever a shrinkable method's layer no longer holds any adapter; returns their names.

    This is the structure ``PeftModel.from_pretrained`` builds from a config that gives such a module width 0.
    """
    root = _base_model(model)
    layer_classes = tuple(kind.layer_class for kind in site_kinds())
    unwrapped = []
    for name, module in list(root.named_modules()):
        if not isinstance(module, layer_classes):
            continue
        if any(len(getattr(module, attribute)) for attribute in module.adapter_layer_names):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        base = module.unload_and_optionally_merge_module(merge=False, safe_merge=False, adapter_names=None)
        setattr(parent, child, base)
        unwrapped.append(name)
    return unwrapped
