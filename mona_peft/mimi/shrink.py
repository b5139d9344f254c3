"""Ranking neurons (global or local), shrinking a PEFT model's adapters, and keeping the optimizer in step.

Global ranking (MiMi's): every neuron of every adapter in one list, ordered by importance; the least important go
first, wherever they are, until the adapters fit the size asked for. Adapters whose neurons all score low lose them
all and disappear, and the parameters go where they matter. Local ranking (the paper's ablation): every adapter keeps
the same fraction of its initial width, its own least important neurons going first.

Sizes are counted in hidden neurons (``measure="neurons"``) or in adapter parameters (``measure="params"``: all
parameters of the shrinkable adapters, shared ones such as Mona's scaled LayerNorm included; not the head).

The optimizer: each shrink creates new parameter objects (smaller tensors). :func:`shrink_adapters` swaps them into
the optimizer's param groups in place (same group, so the same learning rate and weight decay) and, with
``optimizer_state="slice"`` (default), carries AdamW's moments over, sliced to the kept neurons, with the step count:
the kept neurons continue exactly as if the removed ones had never existed (their moments were per-element, so
slicing is exact). ``optimizer_state="reset"`` drops the state of the shrunken parameters (fresh moments and bias
correction at the next step). Parameters of removed adapters leave the optimizer and its state.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..tuners.sites import AdapterSite, Replacement
from .sites import _base_model, find_sites, role_scales, unwrap_empty_layers

Measure = Literal["neurons", "params"]
Ranking = Literal["global", "local"]
OptimizerState = Literal["slice", "reset"]


def active_adapter_name(model: nn.Module) -> str:
    name = getattr(model, "active_adapter", "default")
    return name if isinstance(name, str) else name[0]


def importance_scores(
    model: nn.Module, adapter_name: str | None = None, normalize: bool = True, balanced: bool = False
) -> dict[str, torch.Tensor]:
    """MiMi's importance score of every hidden neuron, ``{site key: scores}`` (see ``mona_peft.mimi.sites``).

    ``balanced`` divides each kind of parameter by its mean magnitude first (:func:`~.sites.role_scales`).
    """
    adapter_name = adapter_name or active_adapter_name(model)
    return site_scores(find_sites(model, adapter_name), normalize, balanced)


def site_scores(sites: list[AdapterSite], normalize: bool = True, balanced: bool = False) -> dict[str, torch.Tensor]:
    scales = role_scales(sites) if balanced else None
    return {site.key: site.scores(normalize, scales) for site in sites}


def adapter_sizes(model: nn.Module, adapter_name: str | None = None) -> dict[str, int]:
    """Hidden neurons of each adapter, ``{site key: width}``, with 0 for adapters removed by MiMi (from the config)."""
    adapter_name = adapter_name or active_adapter_name(model)
    config = model.peft_config[adapter_name]
    sizes = {key: width for key, width in (config.inner_dim_pattern or {}).items() if width == 0}
    sizes.update({site.key: site.size for site in find_sites(model, adapter_name)})
    positions = _site_positions(model, sizes)
    return {key: sizes[key] for key in sorted(positions, key=positions.get)}


def _site_positions(model: nn.Module, keys) -> dict[str, tuple[int, int]]:
    """Model order of the keys that name one site exactly (``re.escape(name)``, Mona's ``name.mona_<site>``).

    Other keys (a user's own regexes) are left out.
    """
    order = {name: index for index, (name, _) in enumerate(_base_model(model).named_modules())}
    positions = {}
    for key in keys:
        for name, index in order.items():
            for site, suffix in enumerate(("", ".mona_attn", ".mona_mlp")):
                if key == re.escape(name + suffix):
                    positions[key] = (index, site)
    return positions


def size_of(sites: list[AdapterSite], widths: dict[str, int], measure: Measure) -> int:
    """Size of ``sites`` at ``widths`` (default: their current widths), in neurons or in parameters."""
    if measure == "neurons":
        return sum(widths.get(s.key, s.size) for s in sites)
    return sum(s.params(widths.get(s.key, s.size)) for s in sites)


def select_neurons(
    sites: list[AdapterSite],
    target: int,
    measure: Measure = "neurons",
    ranking: Ranking = "global",
    normalize: bool = True,
    initial_widths: dict[str, int] | None = None,
    balanced: bool = False,
) -> dict[str, torch.Tensor]:
    """The neurons to keep, ``{site key: sorted indices}``, so that the adapters' size is at most ``target``.

    ``global``: remove the least important neurons across all sites, one by one, until the size fits (ties go by
    site order, then neuron index). ``local``: the largest fraction ``f`` such that keeping ``round(f * initial
    width)`` (at most the current width) of every site's best neurons fits; ``initial_widths`` defaults to the
    current ones.
    """
    if ranking not in ("global", "local"):
        raise ValueError(f"ranking must be 'global' or 'local', got {ranking!r}.")
    scores = site_scores(sites, normalize, balanced)
    if ranking == "global":
        return _keep_global(sites, scores, target, measure)
    return _keep_local(sites, scores, target, measure, initial_widths)


def _keep_global(
    sites: list[AdapterSite], scores: dict[str, torch.Tensor], target: int, measure: Measure
) -> dict[str, torch.Tensor]:
    """Remove the least important neurons across all sites, one by one, until the size fits."""
    widths = {site.key: site.size for site in sites}
    order = sorted(
        (float(value), position, index)
        for position, site in enumerate(sites)
        for index, value in enumerate(scores[site.key].tolist())
    )
    current = size_of(sites, widths, measure)
    removed: dict[str, set[int]] = {site.key: set() for site in sites}
    for _, position, index in order:
        if current <= target:
            break
        site = sites[position]
        before = site.params(widths[site.key]) if measure == "params" else widths[site.key]
        widths[site.key] -= 1
        after = site.params(widths[site.key]) if measure == "params" else widths[site.key]
        current -= before - after
        removed[site.key].add(index)
    return {
        site.key: torch.tensor([i for i in range(site.size) if i not in removed[site.key]], dtype=torch.long)
        for site in sites
    }


def _keep_local(
    sites: list[AdapterSite],
    scores: dict[str, torch.Tensor],
    target: int,
    measure: Measure,
    initial_widths: dict[str, int] | None,
) -> dict[str, torch.Tensor]:
    """Keep the same fraction of every site's initial width (its best neurons), the largest that fits."""
    initial = {site.key: (initial_widths or {}).get(site.key, site.size) for site in sites}

    def widths_at(fraction: float) -> dict[str, int]:
        return {s.key: min(s.size, math.floor(fraction * initial[s.key] + 0.5)) for s in sites}

    low, high = 0.0, 1.0
    if size_of(sites, widths_at(high), measure) > target:
        for _ in range(60):
            middle = (low + high) / 2
            if size_of(sites, widths_at(middle), measure) <= target:
                low = middle
            else:
                high = middle
        chosen = widths_at(low)
    else:
        chosen = widths_at(high)
    keep = {}
    for site in sites:
        best = torch.argsort(scores[site.key], descending=True, stable=True)[: chosen[site.key]]
        keep[site.key] = torch.sort(best).values
    return keep


@dataclass
class ShrinkResult:
    """What one shrink did."""

    sizes_before: dict[str, int]
    sizes_after: dict[str, int]
    removed_sites: list[str] = field(default_factory=list)
    unwrapped_layers: list[str] = field(default_factory=list)
    replaced: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "neurons_before": sum(self.sizes_before.values()),
            "neurons_after": sum(self.sizes_after.values()),
            "removed_sites": list(self.removed_sites),
            "unwrapped_layers": list(self.unwrapped_layers),
        }


def shrink_adapters(
    model: nn.Module,
    keep: dict[str, torch.Tensor],
    adapter_name: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: OptimizerState = "slice",
) -> ShrinkResult:
    """Keep only the neurons ``keep[site key]`` of each adapter (sites not named keep all); rebuild the layers.

    An adapter with no neuron kept is removed from its layer, and a layer left without adapters is unwrapped (the
    plain module goes back). The adapter config's ``inner_dim_pattern`` gets every site's new width (0 for removed
    ones) so that ``save_pretrained`` / ``PeftModel.from_pretrained`` rebuild exactly these shapes. ``optimizer`` (a
    torch optimizer, or a wrapper with ``.optimizer`` such as Accelerate's) is updated in place, see
    :func:`remap_optimizer`.
    """
    adapter_name = adapter_name or active_adapter_name(model)
    sites = find_sites(model, adapter_name)
    known = {site.key for site in sites}
    unknown = sorted(set(keep) - known)
    if unknown:
        raise ValueError(f"Unknown adapter site(s) {unknown}; the adapter '{adapter_name}' has {sorted(known)}.")
    before = {site.key: site.size for site in sites}
    replaced: list[Replacement] = []
    removed: list[nn.Parameter] = []
    removed_sites = []
    for site in sites:
        if site.key not in keep:
            continue
        indices = torch.as_tensor(keep[site.key], dtype=torch.long).flatten()
        if indices.numel() and (
            indices.min() < 0 or indices.max() >= site.size or indices.unique().numel() < len(indices)
        ):
            raise ValueError(f"Neurons to keep of {site.key} must be distinct indices below {site.size}.")
        indices = torch.sort(indices).values
        if indices.numel() == 0:
            removed += site.remove()
            removed_sites.append(site.key)
        elif indices.numel() < site.size:
            replaced += site.shrink(indices)
    after = dict(before)
    after.update({key: len(keep[key]) for key in keep})
    _record_widths(model, adapter_name, after)
    unwrapped = unwrap_empty_layers(model)
    if optimizer is not None:
        remap_optimizer(optimizer, replaced, removed, optimizer_state)
    return ShrinkResult(before, after, removed_sites, unwrapped, len(replaced))


def _record_widths(model: nn.Module, adapter_name: str, widths: dict[str, int]) -> None:
    """Write the widths into the adapter config's ``inner_dim_pattern``.

    MiMi's exact per-site keys come first, in model order (so they win over any other key, as PEFT takes the first
    matching one), then the user's other keys.
    """
    config = model.peft_config[adapter_name]
    previous = dict(config.inner_dim_pattern or {})
    merged = {**previous, **{key: int(width) for key, width in widths.items()}}
    positions = _site_positions(model, merged)
    ours = sorted(positions, key=positions.get)
    config.inner_dim_pattern = {
        **{key: merged[key] for key in ours},
        **{key: value for key, value in previous.items() if key not in positions},
    }


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Expected a torch optimizer (or a wrapper with .optimizer), got {type(optimizer).__name__}.")
    return optimizer


def remap_optimizer(
    optimizer: Any,
    replaced: list[Replacement],
    removed: list[nn.Parameter],
    optimizer_state: OptimizerState = "slice",
) -> None:
    """Point ``optimizer`` at the new parameters after a shrink, in place.

    Each replaced parameter's new object takes its place in the same param group. With ``"slice"``, its state
    tensors shaped like the old parameter (AdamW's ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) are sliced to
    the kept neurons and the rest (``step``) is copied; with ``"reset"``, its state is dropped. Removed parameters
    leave the param groups and the state.
    """
    if optimizer_state not in ("slice", "reset"):
        raise ValueError(f"optimizer_state must be 'slice' or 'reset', got {optimizer_state!r}.")
    optimizer = _torch_optimizer(optimizer)
    mapping = {id(r.old): r for r in replaced}
    gone = {id(p) for p in removed}
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            if id(param) in gone:
                optimizer.state.pop(param, None)
                continue
            replacement = mapping.get(id(param))
            if replacement is None:
                params.append(param)
                continue
            params.append(replacement.new)
            state = optimizer.state.pop(param, None)
            if state and optimizer_state == "slice":
                optimizer.state[replacement.new] = {
                    name: replacement.slicer(value).clone()
                    if isinstance(value, torch.Tensor) and value.shape == param.shape
                    else (value.clone() if isinstance(value, torch.Tensor) else value)
                    for name, value in state.items()
                }
        group["params"] = params
