"""``HoulsbyModel``: the PEFT tuner that adds Houlsby adapters after the attention and the MLP of every block."""

from __future__ import annotations

from torch import nn

from ..architectures import ArchitectureSpec
from ..bottleneck import BottleneckModel
from .layer import HoulsbyLayer


class HoulsbyModel(BottleneckModel):
    """Injects a Houlsby adapter on the attention output projection and the MLP output projection of every block.

    Created by ``peft.get_peft_model(model, HoulsbyConfig(...))`` after ``import mona_peft``. The two Linear layers
    are named per architecture in ``mona_peft.tuners.architectures`` (``attention_output``, ``mlp_output_projection``).
    Not mergeable (``merge_and_unload`` raises); ``unload()`` returns the untouched base model.
    """

    prefix: str = "houlsby_"
    tuner_layer_cls = HoulsbyLayer
    display_name = "Houlsby"

    @staticmethod
    def default_target_names(spec: ArchitectureSpec) -> tuple[str, ...]:
        return tuple(name for name in (spec.attention_output, spec.mlp_output_projection) if name is not None)

    def _check_target(self, target: nn.Module, current_key: str) -> None:
        if not isinstance(target, nn.Linear):
            raise ValueError(
                f"The Houlsby adapter wraps Linear layers, but target_modules matched '{current_key}', a "
                f"{type(target).__name__}. Leave target_modules unset or match only Linear layers."
            )
