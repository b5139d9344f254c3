"""The fine-tuning methods the training script and benchmarks can select with ``--method``.

Mona; VPT (``vpt_shallow``, ``vpt_deep``: visual prompt tuning with ``num_prompts`` prompt tokens, and the head);
and every baseline the papers compare against:

- ``full``: everything trains.
- ``linear``: frozen backbone, only the head trains (linear probe).
- ``bitfit``: every bias term (``*.bias``: Linear, LayerNorm, ...) and the head.
- ``ln_tuning``: PEFT's LayerNorm tuning on every LayerNorm of the backbone (names from the architecture registry;
  PEFT has no default for vision models), and the head.
- ``partial1``: the last transformer block and the head (Partial-1).
- ``adapter``: Houlsby's bottleneck adapter (inner dim 64) after the attention and after the MLP of every block.
- ``lora``: PEFT's LoRA (rank 8, alpha 8) on the query and value projections of every block.
- ``adaptformer``: AdaptFormer's scaled (0.1) parallel adapter (inner dim 64) on the MLP of every block.

``full``, ``linear``, ``bitfit`` and ``partial1`` only choose which parameters of the model train: the builder returns
the transformers model itself (``save_pretrained`` writes the whole model). The others return a ``PeftModel``
(``save_pretrained`` writes only the adapter and the head).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from peft import LNTuningConfig, LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .adaptformer import AdaptFormerConfig
from .architectures import find_blocks, resolve_architecture
from .houlsby import HoulsbyConfig
from .mona import MonaConfig
from .vpt import VPTConfig

MethodBuilder = Callable[..., nn.Module]


def _mona(model: nn.Module, head: list[str], inner_dim: int = 64, **options) -> PeftModel:
    return get_peft_model(model, MonaConfig(inner_dim=inner_dim, modules_to_save=head))


def _vpt_shallow(model: nn.Module, head: list[str], num_prompts: int = 10, **options) -> PeftModel:
    return get_peft_model(model, VPTConfig(num_prompts=num_prompts, deep=False, modules_to_save=head))


def _vpt_deep(model: nn.Module, head: list[str], num_prompts: int = 10, **options) -> PeftModel:
    return get_peft_model(model, VPTConfig(num_prompts=num_prompts, deep=True, modules_to_save=head))


def _in_modules(parameter_name: str, module_names: list[str]) -> bool:
    """Whether the parameter lies inside one of ``module_names`` (matched on whole name parts, as PEFT does)."""
    return any(f".{module}." in f".{parameter_name}" for module in module_names)


def train_only(model: nn.Module, head: list[str], keep: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """Freeze ``model`` except the ``head`` modules and the parameters whose name ``keep`` accepts; returns it."""
    if not any(_in_modules(name, head) for name, _ in model.named_parameters()):
        raise ValueError(f"{type(model).__name__} has no head module named {head} to train.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_in_modules(name, head) or keep(name))
    return model


def last_block_name(model: nn.Module) -> str:
    """Module name of the backbone's last transformer block (found through ``mona_peft.architectures``)."""
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no {resolve_architecture(model).spec.block_class} blocks.")
    return blocks[-1][0]


def _full(model: nn.Module, head: list[str], **options) -> nn.Module:
    return train_only(model, head, keep=lambda name: True)


def _linear(model: nn.Module, head: list[str], **options) -> nn.Module:
    return train_only(model, head)


def _bitfit(model: nn.Module, head: list[str], **options) -> nn.Module:
    return train_only(model, head, keep=lambda name: name.endswith(".bias"))


def _partial1(model: nn.Module, head: list[str], **options) -> nn.Module:
    last = last_block_name(model)
    return train_only(model, head, keep=lambda name: name.startswith(f"{last}."))


def _ln_tuning(model: nn.Module, head: list[str], **options) -> PeftModel:
    layer_norms = list(resolve_architecture(model).spec.layer_norms)
    with warnings.catch_warnings():  # PEFT's LN tuning warns about its own target type
        warnings.filterwarnings("ignore", message="Unsupported layer type .*LayerNorm")
        return get_peft_model(model, LNTuningConfig(target_modules=layer_norms, modules_to_save=head))


def _lora(model: nn.Module, head: list[str], rank: int = 8, alpha: int = 8, **options) -> PeftModel:
    spec = resolve_architecture(model).spec
    query, _, value = spec.attention_projections
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=spec.pattern_in_blocks(query, value), modules_to_save=head
    )
    return get_peft_model(model, config)


def _houlsby(model: nn.Module, head: list[str], inner_dim: int = 64, **options) -> PeftModel:
    return get_peft_model(model, HoulsbyConfig(inner_dim=inner_dim, modules_to_save=head))


def _adaptformer(model: nn.Module, head: list[str], inner_dim: int = 64, scale: float = 0.1, **options) -> PeftModel:
    return get_peft_model(model, AdaptFormerConfig(inner_dim=inner_dim, scale=scale, modules_to_save=head))


METHODS: dict[str, MethodBuilder] = {"mona": _mona, "vpt_shallow": _vpt_shallow, "vpt_deep": _vpt_deep}
# The papers' baselines (see the module docstring).
METHODS.update(
    full=_full,
    linear=_linear,
    bitfit=_bitfit,
    ln_tuning=_ln_tuning,
    partial1=_partial1,
    adapter=_houlsby,
    lora=_lora,
    adaptformer=_adaptformer,
)
#: Methods that only choose which of the model's own parameters train (no PEFT wrapper; the whole model is saved).
FULL_MODEL_METHODS = frozenset({"full", "linear", "bitfit", "partial1"})


def build_method(model: nn.Module, method: str, head: list[str], **options) -> nn.Module:
    """Apply fine-tuning ``method`` to ``model``; the modules in ``head`` always train.

    Raises ``ValueError`` naming the available methods for an unknown one.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(sorted(METHODS))}.")
    return METHODS[method](model, head, **options)


#: Name fragments of the parameters the PEFT methods add (LN tuning's trainable copies of the LayerNorms included).
ADAPTER_PARAMETER_MARKERS = [".mona_", ".houlsby_", ".adaptformer_", ".lora_", ".ln_tuning_layers.", ".vpt_"]


def is_adapter_parameter(name: str) -> bool:
    """Parameters inside the backbone that the method added (they get ``--adapter_lr_scale``)."""
    return any(marker in name for marker in ADAPTER_PARAMETER_MARKERS)


def adamw(params: Iterable, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW in PyTorch's fused form: one pass over every tensor instead of a loop of small kernels per tensor.

    What every method here trains with (training script and benchmarks alike). Adapters have many small tensors
    (Mona on Swin-T: 385), for which the per-tensor loop of the default CPU implementation dominates the step.

    Example::

        optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    """
    return torch.optim.AdamW(params, fused=True, **kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


#: Checkpoint file of the methods that are not PEFT methods: their trainable tensors, by parameter name.
TRAINABLE_FILE = "trainable_model.safetensors"


def save_trainable(model: nn.Module, directory: str | Path) -> Path:
    """Save what ``model`` trains to ``directory``: PEFT's adapter files, or the trainable tensors of a plain model.

    Returns the weights file. The frozen rest is not saved: it is the base model, unchanged.
    """
    directory = Path(directory)
    if isinstance(model, PeftModel):
        model.save_pretrained(directory)
        return directory / "adapter_model.safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(state, directory / TRAINABLE_FILE)
    return directory / TRAINABLE_FILE


def load_trainable(model: nn.Module, directory: str | Path) -> None:
    """Load what ``save_trainable`` saved into ``model`` (built with the same method), in place."""
    directory = Path(directory)
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        return
    state = load_file(directory / TRAINABLE_FILE)
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(
            f"{directory / TRAINABLE_FILE} holds other parameters than the model trains "
            f"(missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]})."
        )
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, tensor in state.items():
            parameters[name].copy_(tensor)
