"""Mona: multi-cognitive visual adapter, as a PEFT method."""

from ..registration import MethodSpec, declare_method, register_method
from .config import MonaConfig
from .layer import MonaLayer, MultiCognitiveFilter, ScaledLayerNorm
from .model import MonaModel

__all__ = ["MonaConfig", "MonaLayer", "MonaModel", "MultiCognitiveFilter", "ScaledLayerNorm"]

register_method("mona", MonaConfig, MonaModel)
declare_method(
    MethodSpec(
        "mona",
        "Mona",
        "Mona (multi-cognitive visual adapter) adds a small adapter to every transformer block, on the residual "
        "stream after attention and after the MLP: a scaled LayerNorm, a down projection, depthwise 3x3/5x5/7x7 "
        "convolutions over the patch grid, GELU and an up projection.",
        options={"inner_dim": 64},
        peft_config=lambda model, head, inner_dim: MonaConfig(inner_dim=inner_dim, modules_to_save=head),
        parameter_markers=(".mona_",),
        # A tenth of the adapter rate for the up projections keeps the stream from blowing up at high rates (the
        # unnormalised x * gammax path makes each Mona a gain on the residual stream; benchmarks/stability).
        lr_scales={".mona_attn_up.": 0.1, ".mona_mlp_up.": 0.1},
        shrinkable=True,
    )
)
