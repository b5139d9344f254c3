"""The fine-tuning methods the training script and benchmarks can select with ``--method``."""

from __future__ import annotations

from collections.abc import Callable

from peft import PeftModel, get_peft_model
from torch import nn

from .mona import MonaConfig

MethodBuilder = Callable[..., nn.Module]


def _mona(model: nn.Module, head: list[str], inner_dim: int = 64, **options) -> PeftModel:
    return get_peft_model(model, MonaConfig(inner_dim=inner_dim, modules_to_save=head))


METHODS: dict[str, MethodBuilder] = {"mona": _mona}


def build_method(model: nn.Module, method: str, head: list[str], **options) -> nn.Module:
    """Apply fine-tuning ``method`` to ``model``; the modules in ``head`` always train.

    Raises ``ValueError`` naming the available methods for an unknown one.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(sorted(METHODS))}.")
    return METHODS[method](model, head, **options)


def is_adapter_parameter(name: str) -> bool:
    """Parameters inside the backbone that the method added (they get ``--adapter_lr_scale``)."""
    return ".mona_" in name


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
