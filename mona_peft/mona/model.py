"""``MonaModel``: the PEFT tuner that injects Mona into a transformers Swin/ViT-family backbone."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..architectures import resolve_architecture
from .config import MonaConfig
from .layer import BASE_ADAPTER_NAME, MonaLayer, TokenGrid


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
        if config.target_modules is None:
            config.target_modules = self.architecture.spec.block_pattern
        if not hasattr(self, "token_grid"):
            self.token_grid = TokenGrid()
        if self.architecture.patch_projection is not None:
            self.token_grid.attach(self.architecture.patch_projection)

    def _prepare_adapter_config(self, peft_config: MonaConfig, model_config: dict) -> MonaConfig:
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
        new_module = MonaLayer(target, adapter_name, peft_config, self.architecture, self.token_grid)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

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
        return model

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Route ``adapter_names=[...]`` (one name per sample, or ``"__base__"``) to every Mona layer."""
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
            if isinstance(module, MonaLayer):
                hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _inject_adapter_names(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs
