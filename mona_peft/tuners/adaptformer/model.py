"""``AdaptFormerModel``: the PEFT tuner that adds AdaptFormer's parallel adapter to the MLP of every block."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..architectures import ArchitectureSpec
from ..bottleneck import BottleneckModel
from .layer import AdaptFormerLayer


class AdaptFormerModel(BottleneckModel):
    """Injects AdaptFormer's scaled parallel adapter next to the MLP of every block.

    Created by ``peft.get_peft_model(model, AdaptFormerConfig(...))`` after ``import mona_peft``. The MLP is named per
    architecture in ``mona_peft.tuners.architectures`` (``mlp_input``, ``mlp_output``). Not mergeable
    (``merge_and_unload`` raises); ``unload()`` returns the untouched base model.
    """

    prefix: str = "adaptformer_"
    tuner_layer_cls = AdaptFormerLayer
    display_name = "AdaptFormer"

    @staticmethod
    def default_target_names(spec: ArchitectureSpec) -> tuple[str, ...]:
        return (spec.mlp_output,)

    def _check_target(self, target: nn.Module, current_key: str) -> None:
        if not any(isinstance(m, nn.Linear) for m in target.modules()):
            raise ValueError(
                f"AdaptFormer wraps MLP modules, but target_modules matched '{current_key}', a "
                f"{type(target).__name__} without Linear layers. Leave target_modules unset or match only MLPs."
            )

    def _layer_kwargs(self, peft_config: Any, current_key: str) -> dict[str, Any]:
        spec = self.architecture.spec
        suffix = f".{spec.mlp_output}"
        if spec.mlp_input == spec.mlp_output or not current_key.endswith(suffix):
            return {}
        block = self.model.get_submodule(current_key.removesuffix(suffix))
        return {"input_module": block.get_submodule(spec.mlp_input)}
