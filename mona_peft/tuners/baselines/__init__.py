"""The baselines the papers compare against, as fine-tuning methods of the scripts and the benchmark.

- ``full``: everything trains.
- ``linear``: frozen backbone, only the head trains (linear probe).
- ``bitfit``: every bias term (``*.bias``: Linear, LayerNorm, ...) and the head.
- ``partial1``: the last transformer block and the head (Partial-1).
- ``ln_tuning``: PEFT's LayerNorm tuning on every LayerNorm of the backbone (names from the architecture registry;
  PEFT has no default for vision models), and the head.
- ``lora``: PEFT's LoRA (rank 8, alpha 8) on the query and value projections of every block.

The first four only choose which of the model's own parameters train: ``save_pretrained`` writes the whole model.
The Houlsby adapter (``adapter``) and AdaptFormer have packages of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from peft import LNTuningConfig, LoraConfig
from torch import nn

from ..architectures import find_blocks, resolve_architecture
from ..registry import MethodSpec, declare_method


def last_block_name(model: nn.Module) -> str:
    """Module name of the backbone's last transformer block (found through ``mona_peft.tuners.architectures``)."""
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no {resolve_architecture(model).spec.block_class} blocks.")
    return blocks[-1][0]


def _last_block(model: nn.Module) -> Callable[[str], bool]:
    last = last_block_name(model)
    return lambda name: name.startswith(f"{last}.")


def _ln_tuning_config(model: nn.Module, head: list[str]) -> LNTuningConfig:
    """The backbone's norms by the registry's name suffixes, or by their full names where a suffix would also match a
    module without parameters (timm names its ``nn.Identity`` placeholders ``norm``, which PEFT cannot wrap) or one
    inside the head (timm's ConvNeXt normalises in its ``head``, which trains in full)."""
    suffixes = resolve_architecture(model).spec.layer_norms
    matched = {
        name: module
        for name, module in model.named_modules()
        if any(name == suffix or name.endswith(f".{suffix}") for suffix in suffixes)
    }
    norms = [
        name
        for name, module in matched.items()
        if any(True for _ in module.parameters()) and not any(name.startswith(f"{h}.") for h in head)
    ]
    if len(norms) == len(matched):
        return LNTuningConfig(target_modules=list(suffixes), modules_to_save=head)
    # a regex matches whole names (PEFT reads a list as suffixes: `norm` would match `blocks.0.attn.norm` again)
    return LNTuningConfig(target_modules="|".join(map(re.escape, norms)), modules_to_save=head)


def _lora_config(model: nn.Module, head: list[str], rank: int, alpha: int) -> LoraConfig:
    spec = resolve_architecture(model).spec
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=spec.pattern_in_blocks(*spec.lora_targets), modules_to_save=head
    )


for _spec in (
    MethodSpec(
        "full",
        "Full fine-tuning",
        "Full fine-tuning trains every parameter of the backbone and the head.",
        trains=lambda model: lambda name: True,
        step_cost=1.0,
    ),
    MethodSpec(
        "linear",
        "Linear probing",
        "Linear probing trains only the head on a frozen backbone.",
        trains=lambda model: lambda name: False,
        step_cost=0.28,
    ),
    MethodSpec(
        "bitfit",
        "BitFit",
        "BitFit trains only the bias terms of the backbone, and the head.",
        trains=lambda model: lambda name: name.endswith(".bias"),
        step_cost=0.57,
    ),
    MethodSpec(
        "ln_tuning",
        "LayerNorm tuning",
        "LayerNorm tuning trains only the LayerNorms of the backbone.",
        peft_config=_ln_tuning_config,
        parameter_markers=(".ln_tuning_layers.",),
        step_cost=0.56,
    ),
    MethodSpec(
        "partial1",
        "Partial-1",
        "Partial-1 trains the last transformer block of the backbone and the head.",
        trains=_last_block,
        step_cost=0.32,
    ),
    MethodSpec(
        "lora",
        "LoRA",
        "LoRA adds trainable low-rank updates to the attention's query and value projections.",
        options={"rank": 8, "alpha": 8},
        option_help={"rank": "LoRA's rank.", "alpha": "LoRA's alpha (the update is scaled by alpha / rank)."},
        peft_config=_lora_config,
        parameter_markers=(".lora_",),
        step_cost=0.59,
    ),
):
    declare_method(_spec)
