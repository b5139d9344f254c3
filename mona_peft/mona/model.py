"""``MonaModel``: the PEFT tuner that injects Mona into a transformers Swin/ViT-family backbone."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..architectures import resolve_architecture
from ..tuner_utils import WrappingTuner
from .config import MonaConfig, mona_inner_dim
from .layer import SITES, MonaLayer, TokenGrid


class MonaModel(WrappingTuner):
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
    merge_error = (
        "Mona adapters cannot be merged into the base model: Mona is a non-linear module on the residual stream."
    )

    def _pre_injection_hook(self, model: nn.Module, config: MonaConfig, adapter_name: str) -> None:
        self.architecture = resolve_architecture(model)
        if not hasattr(self, "token_grid"):
            self.token_grid = TokenGrid()
        if self.architecture.patch_projection is not None:
            self.token_grid.attach(self.architecture.patch_projection)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._attach_checkpoint_input_hooks(model)

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

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ):
        model = super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
        self.token_grid.detach()
        self._remove_checkpoint_input_hooks()
        return model
