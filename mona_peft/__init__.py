"""Mona, VPT and MiMi as PEFT methods for transformers' Swin and ViT family.

``import mona_peft`` registers the methods with PEFT; do it before any PEFT load path
(``PeftModel.from_pretrained``, ``PeftConfig.from_pretrained``, ``AutoPeftModel...``).
"""

# isort: off
# The method packages, in the order reports list their methods; importing one registers it (mona_peft.registration).
# Adding a method: its own folder, plus its name here.
from . import baselines, houlsby, adaptformer, vpt, mona  # noqa: F401

# isort: on
from .adaptformer import AdaptFormerConfig, AdaptFormerLayer, AdaptFormerModel
from .architectures import (
    SUPPORTED_ARCHITECTURES,
    ArchitectureSpec,
    UnsupportedArchitectureError,
    supported_model_types,
)
from .config_utils import AdapterMismatchError, ConfigTypeError
from .houlsby import HoulsbyConfig, HoulsbyLayer, HoulsbyModel
from .mona import MonaConfig, MonaLayer, MonaModel
from .vpt import VPTConfig, VPTLayer, VPTModel

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AdaptFormerConfig",
    "AdaptFormerLayer",
    "AdaptFormerModel",
    "AdapterMismatchError",
    "ArchitectureSpec",
    "ConfigTypeError",
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
