"""Houlsby's bottleneck adapter (after the attention and after the MLP), as a PEFT method."""

from ..registry import MethodSpec, declare_method, register_method
from .config import HoulsbyConfig
from .layer import HoulsbyLayer
from .model import HoulsbyModel
from .site import HoulsbySite

__all__ = ["HoulsbyConfig", "HoulsbyLayer", "HoulsbyModel"]

register_method("houlsby", HoulsbyConfig, HoulsbyModel)
declare_method(
    MethodSpec(
        "adapter",
        "Houlsby adapter",
        "Houlsby's bottleneck adapter (down projection, GELU, up projection, plus a skip) on the output of the "
        "attention and of the MLP of every transformer block.",
        options={"inner_dim": 64},
        option_help={"inner_dim": "Bottleneck width of the adapters."},
        peft_config=lambda model, head, inner_dim: HoulsbyConfig(inner_dim=inner_dim, modules_to_save=head),
        parameter_markers=(".houlsby_",),
        site=HoulsbySite,
        step_cost=0.64,
    )
)
