"""Plumbing shared by mona_peft's tuners (Mona, VPT, Houlsby, AdaptFormer).

All of them wrap whole modules (blocks, MLPs, projections) with non-linear adapters: they cannot be
merged, unloading puts the wrapped module back as it was, mixed batches route ``adapter_names`` to
the tuner layers and to PEFT's ``modules_to_save`` heads, and reentrant gradient checkpointing
needs a grad-requiring input at every checkpointed region that holds adapter parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
)
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn
from torch.utils._pytree import tree_map
from transformers.modeling_layers import GradientCheckpointingLayer

from .architectures import resolve_architecture
from .config_utils import AdapterMismatchError

#: The name that selects the frozen base model for a row of a mixed batch.
BASE_ADAPTER_NAME = "__base__"


def check_adapter_state_dict(
    model: nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor], method: str = "adapter"
) -> None:
    """Raise ``AdapterMismatchError`` unless ``state_dict`` (keys remapped to the model's) holds exactly the tensors
    of adapter ``adapter_name`` of ``model``, in their shapes: its tuner layers and its ``modules_to_save`` copies.

    The message names each missing, unexpected or mis-shaped key (the first few of each) and says what it means.
    """
    model_state = model.state_dict()
    expected = set(
        _filter_state_dict_by_key_prefixes(model_state, _get_tuner_state_dict_key_prefixes(model, adapter_name))
    )
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            copy = f"{name}.modules_to_save.{adapter_name}."
            expected.update(key for key in model_state if key.startswith(copy))
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(key for key in state_dict if key not in model_state)
    mis_shaped = [
        f"{key}: {tuple(tensor.shape)} in the checkpoint, {tuple(model_state[key].shape)} in the model"
        for key, tensor in state_dict.items()
        if key in expected and tuple(tensor.shape) != tuple(model_state[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing (they would keep their random initial values): {_first(missing)}")
    if unexpected:
        problems.append(
            f"unexpected (no such module or tensor in the model built from the config): {_first(unexpected)}"
        )
    if mis_shaped:
        problems.append(f"of another shape: {_first(mis_shaped)}")
    if problems:
        raise AdapterMismatchError(
            f"The {method} adapter '{adapter_name}' does not fit this model: its adapter_config.json and the base "
            "model build other modules than its weights file holds. Tensors " + "; ".join(problems) + ". Load it "
            "onto the base model it was trained with, with its unedited adapter_config.json."
        )


def _first(keys: list[str], count: int = 5) -> str:
    shown = ", ".join(key.removeprefix("base_model.model.") for key in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def require_grad_for_checkpointing(region: nn.Module, args: tuple) -> tuple:
    """``args`` with the hidden states (``args[0]``) requiring grad, when ``region`` is about to be checkpointed.

    Reentrant checkpointing gives no gradient to the parameters inside a checkpointed region unless one of its
    inputs requires grad, and the first region's input comes from frozen embeddings. transformers'
    ``enable_input_require_grads`` cannot fix that for Swin (its patch embedding returns a tuple), so the input of
    each checkpointed region that holds trainable parameters becomes a grad-requiring alias of the frozen hidden
    states (the caller's tensor is not modified). Non-reentrant checkpointing does not need it; it only costs the
    gradient of that region's input.
    """
    hidden = args[0] if args else None
    if (
        isinstance(hidden, torch.Tensor)
        and hidden.is_floating_point()
        and not hidden.requires_grad
        and torch.is_grad_enabled()
        and any(p.requires_grad for p in region.parameters())
    ):
        return (hidden.detach().requires_grad_(),) + tuple(args[1:])
    return args


def _checkpoints(module: nn.Module) -> bool:
    """Whether ``module`` checkpoints what it runs: a transformers checkpointing layer, or a timm model or stage whose
    ``grad_checkpointing`` switch is on (timm checkpoints the sequence of blocks inside it)."""
    return bool(getattr(module, "gradient_checkpointing", False) or getattr(module, "grad_checkpointing", False))


def _checkpoint_input_pre_hook(module: nn.Module, args: tuple):
    if not (module.training and _checkpoints(module)):
        return None
    new_args = require_grad_for_checkpointing(module, args)
    return None if new_args is args else new_args


#: Module types whose ``modules_to_save`` copies PEFT itself can mix in one batch.
_PEFT_MIXABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _forward_row_groups(wrapper: ModulesToSaveWrapper, *args: Any, adapter_names: list[str], **kwargs: Any):
    """A ``modules_to_save`` head in a mixed batch: each adapter's rows through that adapter's copy of the head.

    Tensors in the inputs (also inside lists, as UperNet's feature maps) with one row per sample are split by
    adapter; the head's tensor outputs are put back in sample order. ``"__base__"`` rows use the original head.
    """
    rows = len(adapter_names)
    output = None
    for name in dict.fromkeys(adapter_names):
        index = torch.tensor([i for i, n in enumerate(adapter_names) if n == name])

        def pick(value: Any, index: torch.Tensor = index) -> Any:
            is_batch = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows
            return value.index_select(0, index.to(value.device)) if is_batch else value

        head = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
        result = head(*tree_map(pick, args), **tree_map(pick, kwargs))
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"Mixed batches need heads that return one tensor; {type(head).__name__} does not.")
        if output is None:
            output = result.new_empty((rows, *result.shape[1:]))
        output[index.to(result.device)] = result
    return output


def _inject_adapter_names(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


class WrappingTuner(BaseTuner):
    """Base of mona_peft's tuners: injection, unloading and mixed batches written once.

    A subclass says what differs through these hooks (``architecture`` is resolved before the first one runs):

    - ``display_name`` and ``merge_error``: the method's name in messages, and why merging is impossible;
    - ``_default_target_modules()``: what ``target_modules=None`` means (default: every transformer block);
    - ``_check_target(target, key)``: raise a clear error for a module that cannot carry the layer (default: it
      must be a whole transformer block);
    - ``_new_layer(target, adapter_name, config, key)``: the tuner layer wrapping ``target``, or ``None`` to leave
      it unwrapped; ``_update_layer(layer, adapter_name, config, key)``: add an adapter to an existing one;
    - ``_after_injection(model)``: wiring that needs every layer in place (default: the checkpoint input hooks
      above); hooks registered with ``_hook_once`` are removed by ``unload()``, and ``_after_unload()`` resets
      the rest of the tuner's state.

    Example (every tuner is created this way, from its config; each tuner's own example shows its line):

        ```py
        >>> import mona_peft
        >>> from peft import get_peft_model
        >>> from transformers import ViTConfig, ViTForImageClassification
        >>> base = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        ...                                            intermediate_size=128, image_size=32, patch_size=8))
        >>> model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["classifier"]))
        ```
    """

    display_name: str = "These"
    merge_error: str = "These adapters cannot be merged into the base model."
    target_module_mapping: dict[str, list[str]] = {}
    #: False when the layers to wrap can only come from the config: with a state_dict, PEFT would wrap only the
    #: modules named in it.
    inject_from_state_dict: bool = True

    # -- injection ---------------------------------------------------------------------------------------------
    def _pre_injection_hook(self, model: nn.Module, config: Any, adapter_name: str) -> None:
        self.architecture = resolve_architecture(model)

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        # Runs for every adapter (add_adapter, load_adapter too), unlike _pre_injection_hook.
        self._check_base_model_type(peft_config)
        if peft_config.target_modules is None:
            peft_config.target_modules = self._default_target_modules()
        return peft_config

    def _check_base_model_type(self, peft_config: Any) -> None:
        """Record the backbone's ``model_type`` in a new adapter's config; refuse an adapter made for another one.

        Checked before the target modules are matched: a Swin adapter's block pattern matches nothing in a ViT
        (PEFT then says only that no module matched), and a ViT adapter's matches a DeiT's blocks by suffix.
        """
        model_type = self.architecture.spec.model_type
        recorded = getattr(peft_config, "base_model_type", None)
        if recorded is None:
            peft_config.base_model_type = model_type
        elif recorded != model_type:
            raise AdapterMismatchError(
                f"This {self.display_name} adapter was made for a '{recorded}' backbone, but the model is a "
                f"'{model_type}' ({self.architecture.spec.block_class} blocks). Load it onto the base model it was "
                "trained with (see base_model_name_or_path in its adapter_config.json)."
            )

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """PEFT's remapping, then a strict check: the checkpoint must hold exactly this adapter's tensors.

        PEFT only warns about missing adapter keys and ignores unexpected ones; for these methods a missing tensor
        silently keeps its random initialisation and an extra one means the config was built differently from the
        weights (e.g. ``kernel_sizes`` edited, or a deeper model). Both, and shape mismatches, raise here.
        """
        state_dict = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, adapter_name, state_dict, cls.display_name)
        return state_dict

    def _default_target_modules(self) -> str:
        return self.architecture.spec.block_pattern

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        if not self.inject_from_state_dict:
            kwargs["state_dict"] = None
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._after_injection(model)

    def _after_injection(self, model: nn.Module) -> None:
        self._attach_checkpoint_input_hooks(model)

    def _create_and_replace(
        self,
        peft_config: Any,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        if isinstance(target, self.tuner_layer_cls):
            self._update_layer(target, adapter_name, peft_config, current_key)
            return
        if isinstance(target, BaseTunerLayer):
            raise ValueError(f"'{current_key}' already carries another PEFT method's layer ({type(target).__name__}).")
        self._check_target(target, current_key)
        new_module = self._new_layer(target, adapter_name, peft_config, current_key)
        if new_module is None:
            return
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_target(self, target: nn.Module, current_key: str) -> None:
        block_class = self.architecture.spec.block_class
        if type(target).__name__ != block_class:
            raise ValueError(
                f"{self.display_name} attaches to whole transformer blocks ({block_class}), but target_modules matched "
                f"'{current_key}', a {type(target).__name__}. Leave target_modules unset or match only blocks."
            )

    def _new_layer(
        self, target: nn.Module, adapter_name: str, peft_config: Any, current_key: str
    ) -> BaseTunerLayer | None:
        raise NotImplementedError

    def _update_layer(self, layer: BaseTunerLayer, adapter_name: str, peft_config: Any, current_key: str) -> None:
        layer.update_layer(adapter_name, peft_config)

    # -- hooks on the base model -------------------------------------------------------------------------------
    def _hook_once(self, kind: str, module: nn.Module, register: Callable[[nn.Module], Any]) -> None:
        """Call ``register(module)`` unless it already ran for this ``kind`` and module; ``unload()`` removes the
        handle(s) it returns."""
        hooks = self.__dict__.setdefault("_base_model_hooks", {})
        if (kind, id(module)) not in hooks:
            handles = register(module)
            hooks[(kind, id(module))] = handles if isinstance(handles, tuple) else (handles,)

    def _checkpointed_regions(self, model: nn.Module) -> list[nn.Module]:
        """The gradient-checkpointing layers of ``model`` (and timm's checkpointing models and stages) that hold tuner
        layers."""
        layer_names = [name for name, module in model.named_modules() if isinstance(module, self.tuner_layer_cls)]
        return [
            module
            for name, module in model.named_modules()
            if (isinstance(module, GradientCheckpointingLayer) or hasattr(module, "grad_checkpointing"))
            and any(layer_name.startswith(f"{name}.") for layer_name in layer_names)
        ]

    def _attach_checkpoint_input_hooks(self, model: nn.Module, regions: list[nn.Module] | None = None) -> None:
        """Give every checkpointed layer that holds tuner layers (or each of ``regions``) a grad-requiring input (see
        above)."""
        for region in self._checkpointed_regions(model) if regions is None else regions:
            self._hook_once(
                "checkpoint_input", region, lambda module: module.register_forward_pre_hook(_checkpoint_input_pre_hook)
            )

    # -- unloading and merging ---------------------------------------------------------------------------------
    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if (isinstance(child, BaseTunerLayer) and new_module is child.base_layer) or isinstance(
            child, AuxiliaryTrainingWrapper
        ):
            # unload(): put the untouched module (or the head's trained copy) back. PEFT's default copies `child.weight`
            # onto it, assuming a wrapped Linear/Conv; a block, an MLP or a composite head (timm's) has no `weight`.
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        model = super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
        for handles in self.__dict__.pop("_base_model_hooks", {}).values():
            for handle in handles:
                handle.remove()
        self._after_unload()
        return model

    def _after_unload(self) -> None:
        """Reset tuner state that outlives the layers (nothing unless a subclass keeps some)."""

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(f"{self.merge_error} Use `unload()` to get the base model back, or keep the adapter.")

    # -- mixed batches -----------------------------------------------------------------------------------------
    def _check_mixed_batch(self, adapter_names: list[str]) -> None:
        """Raise if these adapters cannot share one batch (all can, unless a subclass says otherwise)."""

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Route ``adapter_names=[...]`` (one name per sample, or ``"__base__"``) to every tuner layer and head.

        The heads are PEFT's modules_to_save wrappers, which pick each row's copy as they do for LoRA.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Mixed-adapter batches (`adapter_names=`) are for inference; call model.eval() first.")
        known = set(self.peft_config) | {BASE_ADAPTER_NAME}
        unknown = sorted(set(adapter_names) - known)
        if unknown:
            raise ValueError(f"Unknown adapter name(s) {unknown} in adapter_names; available: {sorted(known)}.")
        self._check_mixed_batch([name for name in dict.fromkeys(adapter_names) if name != BASE_ADAPTER_NAME])
        handles, routed_heads = [], []
        for module in self.model.modules():
            if isinstance(module, (self.tuner_layer_cls, AuxiliaryTrainingWrapper)):
                hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            if isinstance(module, ModulesToSaveWrapper) and not isinstance(module.original_module, _PEFT_MIXABLE):
                # PEFT mixes rows only for single layers; a whole head (UperNet's decode head) runs per group here.
                module._mixed_batch_forward = partial(_forward_row_groups, module)
                routed_heads.append(module)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in routed_heads:
                del module._mixed_batch_forward


class WrappingLayer(BaseTunerLayer):
    """Tuner-layer side of :class:`WrappingTuner`: wraps a module without a ``.weight``; never merges.

    Subclasses set ``method_name`` ("Mona") and ``merge_reason`` (why its adapters cannot be merged).
    """

    method_name: str = "These"
    merge_reason: str = "they are not a change of weights"

    @staticmethod
    def _block_width(block: nn.Module) -> int:
        """Hidden width of a transformer block, read off its first LayerNorm."""
        for module in block.modules():
            if isinstance(module, nn.LayerNorm):
                return module.normalized_shape[0]
        raise ValueError(f"Cannot find the width of {type(block).__name__}: it has no LayerNorm.")

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # A block or an MLP has no `.weight`; its first parameter tells where it lives.
        parameter = next(base_layer.parameters(), None)
        return (None, None) if parameter is None else (parameter.device, parameter.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            f"{self.method_name} adapters cannot be merged into the base weights: {self.merge_reason}. "
            "Keep the adapter, or use `unload()` to drop it."
        )

    def unmerge(self) -> None:
        raise NotImplementedError(f"{self.method_name} adapters are never merged, so there is nothing to unmerge.")

    def _finish_update(self, adapter_name: str) -> None:
        """After an adapter's modules are created: put them where the wrapped module lives and in its mode."""
        self._move_adapter_to_device_of_base_layer(adapter_name)
        # New modules start in training mode; follow the wrapped module, so an eval-mode model runs no dropout.
        self.train(self.base_layer.training)
        self.set_adapter(self.active_adapters)

    def _remove_hooks(self) -> None:
        """Remove the hooks this layer put on modules inside ``base_layer`` (none unless a subclass adds some)."""

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """Detach and return the wrapped module untouched (PEFT calls this from ``unload()``)."""
        if merge:
            self.merge(safe_merge, adapter_names)
        self._remove_hooks()
        return self.base_layer
