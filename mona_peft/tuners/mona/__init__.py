"""Mona: multi-cognitive visual adapter, as a PEFT method."""

from ..registry import MethodSpec, declare_method, register_method
from .config import MonaConfig
from .layer import MonaLayer, MultiCognitiveFilter, ScaledLayerNorm
from .model import MonaModel
from .site import MonaSite

__all__ = ["MonaConfig", "MonaLayer", "MonaModel", "MultiCognitiveFilter", "ScaledLayerNorm"]

register_method("mona", MonaConfig, MonaModel)
declare_method(
    MethodSpec(
        "mona",
        "Mona",
        "Mona (multi-cognitive visual adapter) adds a small adapter to every transformer block, on the residual "
        "stream after attention and after the MLP: a scaled LayerNorm, a down projection, depthwise 3x3/5x5/7x7 "
        "convolutions over the patch grid, GELU and an up projection.",
        options={"inner_dim": 64, "gradient_checkpointing": False},
        option_help={
            "inner_dim": "Bottleneck width of the adapters.",
            "gradient_checkpointing": "Keep only each Mona's input for the backward pass and recompute its inside "
            "(less memory, same results); the dense tasks turn it on by default.",
        },
        option_flags={"gradient_checkpointing": "mona_gradient_checkpointing"},
        resumable_options=("gradient_checkpointing",),
        peft_config=lambda model, head, inner_dim, gradient_checkpointing: MonaConfig(
            inner_dim=inner_dim, gradient_checkpointing=gradient_checkpointing, modules_to_save=head
        ),
        parameter_markers=(".mona_",),
        # The projections at a tenth of the adapter rate: through the unnormalised `x * gammax` input, each Mona
        # adds up(filter(down(x))) to the stream it reads, and Adam's per-element steps grow that gain until the
        # stream blows up at high rates (benchmarks/stability). Same function, only the optimiser's step differs.
        lr_scales={f".mona_{site}_{projection}.": 0.1 for site in ("attn", "mlp") for projection in ("down", "up")},
        site=MonaSite,
        step_cost=0.85,
    )
)
