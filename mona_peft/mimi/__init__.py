"""MiMi (Marouf et al., "Mini but Mighty: Finetuning ViTs with Mini Adapters"): grow small adapters by shrinking.

Train large Mona / Houlsby adapters, then repeatedly remove the least important hidden neurons (ranked across all
adapters; some adapters disappear) and train on, until a target size. Shrinking is structured: layers are rebuilt
smaller and the per-adapter widths are saved in the adapter config (``inner_dim_pattern``, 0 = removed), so the
small adapter saves small and reloads with ``PeftModel.from_pretrained`` after ``import mona_peft``.

- :mod:`.sites`: the importance score (what each neuron owns, for Mona and Houlsby) and the structured shrink.
- :mod:`.shrink`: global / local ranking, :func:`shrink_adapters`, the optimizer update.
- :mod:`.schedule`: :class:`MiMiSchedule` (``rho``, epochs per cycle, target) and :class:`MiMi` for any loop.
- :mod:`.callback`: :class:`MiMiCallback` for the HF ``Trainer``.
"""

from ..tuners.houlsby.site import HoulsbySite
from ..tuners.mona.site import MonaSite
from .schedule import MiMi, MiMiSchedule
from .shrink import (
    ShrinkResult,
    adapter_sizes,
    importance_scores,
    remap_optimizer,
    select_neurons,
    shrink_adapters,
)
from .sites import AdapterSite, find_sites, role_scales, site_kinds, unwrap_empty_layers


def __getattr__(name: str):
    if name == "MiMiCallback":  # transformers' Trainer machinery is only imported when asked for
        from .callback import MiMiCallback

        return MiMiCallback
    raise AttributeError(name)


__all__ = [
    "AdapterSite",
    "HoulsbySite",
    "MiMi",
    "MiMiCallback",
    "MiMiSchedule",
    "MonaSite",
    "ShrinkResult",
    "adapter_sizes",
    "find_sites",
    "importance_scores",
    "remap_optimizer",
    "role_scales",
    "site_kinds",
    "select_neurons",
    "shrink_adapters",
    "unwrap_empty_layers",
]
