"""Mona, VPT and MiMi as PEFT methods for transformers' Swin and ViT family.

``import mona_peft`` registers the methods with PEFT; do it before any PEFT load path
(``PeftModel.from_pretrained``, ``PeftConfig.from_pretrained``, ``AutoPeftModel...``).
"""

from .adaptformer import AdaptFormerConfig, AdaptFormerLayer, AdaptFormerModel
from .architectures import (
    SUPPORTED_ARCHITECTURES,
    ArchitectureSpec,
    UnsupportedArchitectureError,
    supported_model_types,
)
from .houlsby import HoulsbyConfig, HoulsbyLayer, HoulsbyModel
from .mona import MonaConfig, MonaLayer, MonaModel
from .registration import register_all
from .vpt import VPTConfig, VPTLayer, VPTModel

register_all()

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AdaptFormerConfig",
    "AdaptFormerLayer",
    "AdaptFormerModel",
    "ArchitectureSpec",
    "HoulsbyConfig",
    "HoulsbyLayer",
    "HoulsbyModel",
    "MonaConfig",
    "MonaLayer",
    "MonaModel",
    "UnsupportedArchitectureError",
    "VPTConfig",
    "VPTLayer",
    "VPTModel",
    "supported_model_types",
]
