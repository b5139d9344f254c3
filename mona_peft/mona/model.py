"""``MonaModel``: the PEFT tuner that injects Mona into a transformers Swin/ViT-family backbone."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..architectures import resolve_architecture
from .config import MonaConfig, mona_inner_dim
from .layer import BASE_ADAPTER_NAME, SITES, MonaLayer, TokenGrid, require_grad_for_checkpointing


class MonaModel(BaseTuner):
    """Injects Mona into every transformer block of a supported backbone.

    Created by ``peft.get_peft_model(model, MonaConfig(...))`` after ``import mona_peft``. The
    backbone is found through ``mona_peft.architectures``; unsupported models raise an error naming
    the supported ones. Mona is not mergeable (``merge_and_unload`` raises); ``unload()`` returns the
    untouched base model.

    Example:

        ```py
        >>> import mona_peft
        >>> from peft import get_peft_model
        >>> from transformers import ViTConfig, ViTForImageClassification
        >>> base = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        ...                                            intermediate_size=128, image_size=32, patch_size=8))
        >>> model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["classifier"]))
        ```
    """

    prefix: str = "mona_"
    tuner_layer_cls = MonaLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _pre_injection_hook(self, model: nn.Module, config: MonaConfig, adapter_name: str) -> None:
        self.architecture = resolve_architecture(model)
        if not hasattr(self, "token_grid"):
            self.token_grid = TokenGrid()
        if self.architecture.patch_projection is not None:
            self.token_grid.attach(self.architecture.patch_projection)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._attach_checkpoint_input_hooks(model)

    def _attach_checkpoint_input_hooks(self, model: nn.Module) -> None:
        """Let reentrant checkpointing of regions that *contain* Mona blocks (Swin's stages) train Mona.

        ``MonaLayer`` makes its own checkpointed input require grad; a checkpointed ancestor (``SwinStage`` is a
        ``GradientCheckpointingLayer`` too) runs its first pass without grad, so it needs the same at its input.
        """
        hooks = self.__dict__.setdefault("_checkpoint_input_hooks", {})
        mona_names = [name for name, module in model.named_modules() if isinstance(module, MonaLayer)]
        for name, module in model.named_modules():
            if id(module) in hooks or not isinstance(module, GradientCheckpointingLayer):
                continue
            if any(mona_name.startswith(f"{name}.") for mona_name in mona_names):
                hooks[id(module)] = module.register_forward_pre_hook(_checkpoint_input_pre_hook)

    def _prepare_adapter_config(self, peft_config: MonaConfig, model_config: dict) -> MonaConfig:
        # Runs for every adapter (add_adapter, load_adapter too), unlike _pre_injection_hook.
        if peft_config.target_modules is None:
            peft_config.target_modules = self.architecture.spec.block_pattern
        return peft_config

    def _create_and_replace(
        self,
        peft_config: MonaConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        if isinstance(target, MonaLayer):
            target.update_layer(adapter_name, peft_config)
            return
        block_class = self.architecture.spec.block_class
        if type(target).__name__ != block_class:
            raise ValueError(
                f"Mona attaches to whole transformer blocks ({block_class}), but target_modules matched "
                f"'{current_key}', a {type(target).__name__}. Leave target_modules unset or match only blocks."
            )
        if all(mona_inner_dim(peft_config, current_key, site) == 0 for site in SITES):
            return  # MiMi removed both Monas of this block: leave it unwrapped
        new_module = MonaLayer(
            target, adapter_name, peft_config, self.architecture, self.token_grid, module_name=current_key
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(child, MonaLayer) and new_module is child.base_layer:
            # unload(): put the untouched block back. PEFT's default would copy `child.weight` onto it, assuming a
            # wrapped Linear/Conv; a transformer block has no `weight`.
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(
            "Mona adapters cannot be merged into the base model: Mona is a non-linear module on the residual stream. "
            "Use `unload()` to get the base model back, or keep the adapter."
        )

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ):
        model = super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
        self.token_grid.detach()
        for handle in self.__dict__.pop("_checkpoint_input_hooks", {}).values():
            handle.remove()
        return model

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Route ``adapter_names=[...]`` (one name per sample, or ``"__base__"``) to every Mona layer and head.

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
        handles = []
        for module in self.model.modules():
            # modules_to_save wrappers (the head) route rows per adapter too, as in PEFT's LoRA
            if isinstance(module, (MonaLayer, AuxiliaryTrainingWrapper)):
                hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _checkpoint_input_pre_hook(module: nn.Module, args: tuple):
    if not (module.training and getattr(module, "gradient_checkpointing", False)):
        return None
    new_args = require_grad_for_checkpointing(module, args)
    return None if new_args is args else new_args


def _inject_adapter_names(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs
