"""Using the fine-tuning methods that the method packages declare (see :mod:`mona_peft.tuners.registry`).

:func:`build_method` applies a method by its ``--method`` name; :func:`is_adapter_parameter` tells the parameters the
methods add and :func:`parameter_groups` the learning rate of each; :func:`save_trainable` / :func:`load_trainable`
checkpoint what a method trains; :func:`adamw` is the optimizer every method trains with.

PEFT methods (``mona``, ``vpt_shallow``, ``vpt_deep``, ``adapter``, ``adaptformer``, ``lora``, ``ln_tuning``) return
a ``PeftModel`` (``save_pretrained`` writes only the adapter and the head); ``full``, ``linear``, ``bitfit`` and
``partial1`` only choose which parameters of the model train and return the transformers model itself
(``save_pretrained`` writes the whole model).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn

from .config_utils import check_safetensors_file
from .registry import get_method, methods


def build_method(model: nn.Module, method: str, head: list[str], **options: Any) -> nn.Module:
    """Apply fine-tuning ``method`` to ``model``; the modules in ``head`` always train.

    Raises ``ValueError`` naming the available methods for an unknown one, and naming the option for an option the
    method does not accept.

    Example::

        base = AutoModelForImageClassification.from_pretrained(path)
        model = build_method(base, "mona", ["classifier"], inner_dim=32)
    """
    spec = get_method(method)
    if not spec.saves_whole_model:
        _refuse_ambiguous_heads(model, head)
    return spec.build(model, head, **options)


def _refuse_ambiguous_heads(model: nn.Module, head: list[str]) -> None:
    """PEFT wraps every module whose name merely ends with a ``modules_to_save`` entry (``"head"`` also catches
    ``"head.head"`` and ``"auxiliary_head"``, huggingface/peft#1917); such an adapter saves keys it cannot load back."""
    names = [name for name, _ in model.named_modules()]
    clashes = {entry: [n for n in names if n != entry and n.endswith(entry)] for entry in head}
    clashes = {entry: others for entry, others in clashes.items() if others}
    if clashes:
        listed = "; ".join(
            f"{entry!r} also matches {', '.join(map(repr, others))}" for entry, others in clashes.items()
        )
        raise ValueError(
            f"Cannot train the heads {head} of {type(model).__name__} through PEFT's modules_to_save: PEFT matches "
            f"them by name suffix, so {listed}, and the saved adapter would not load back (huggingface/peft#1917). "
            "Train the backbone's adapters with modules_to_save=[] and save the heads yourself, or use a model whose "
            "head names are not suffixes of other module names (UperNet: decode_head, auxiliary_head)."
        )


def is_adapter_parameter(name: str) -> bool:
    """Parameters inside the backbone that a method added (they get ``--adapter_lr_scale``)."""
    return any(spec.is_own_parameter(name) for spec in methods().values())


def parameter_groups(model: nn.Module, learning_rate: float, adapter_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable parameters, one per learning rate (empty groups left out).

    The head and a whole-model method's parameters train at ``learning_rate``; the parameters a method adds inside
    the backbone at ``learning_rate * adapter_lr_scale``, times the factor the method declares for some of them
    (``MethodSpec.lr_scales``: Mona's up projections at 0.1, see ``benchmarks/stability``).

    Example::

        optimizer = adamw(parameter_groups(model, 1e-3, adapter_lr_scale=2.0), weight_decay=0.05)
    """
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        owner = next((spec for spec in methods().values() if spec.is_own_parameter(name)), None)
        lr = learning_rate if owner is None else learning_rate * adapter_lr_scale * owner.lr_scale(name)
        groups.setdefault(lr, []).append(parameter)
    return [{"params": params, "lr": lr} for lr, params in groups.items()]


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
        return directory / SAFETENSORS_WEIGHTS_NAME
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(state, directory / TRAINABLE_FILE)
    return directory / TRAINABLE_FILE


def load_trainable(model: nn.Module, directory: str | Path) -> None:
    """Load what ``save_trainable`` saved into ``model`` (built with the same method), in place."""
    directory = Path(directory)
    if isinstance(model, PeftModel):
        # Strict for mona_peft's methods: their tuners refuse missing, unexpected and mis-shaped keys on load.
        weights = directory / SAFETENSORS_WEIGHTS_NAME
        check_safetensors_file(weights)
        set_peft_model_state_dict(model, load_file(weights))
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
