"""AdaptFormer's scaled parallel adapter on the MLP, as a PEFT method."""

from ..registry import MethodSpec, declare_method, register_method
from .config import AdaptFormerConfig
from .layer import AdaptFormerLayer
from .model import AdaptFormerModel

__all__ = ["AdaptFormerConfig", "AdaptFormerLayer", "AdaptFormerModel"]

register_method("adaptformer", AdaptFormerConfig, AdaptFormerModel)
declare_method(
    MethodSpec(
        "adaptformer",
        "AdaptFormer",
        "AdaptFormer adds a scaled bottleneck (down projection, ReLU, up projection) in parallel to the MLP of every "
        "transformer block.",
        options={"inner_dim": 64, "scale": 0.1},
        option_help={
            "inner_dim": "Bottleneck width of the adapters.",
            "scale": "Factor on AdaptFormer's parallel branch.",
        },
        peft_config=lambda model, head, inner_dim, scale: AdaptFormerConfig(
            inner_dim=inner_dim, scale=scale, modules_to_save=head
        ),
        parameter_markers=(".adaptformer_",),
        step_cost=0.61,
    )
)
