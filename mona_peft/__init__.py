"""Mona, VPT and MiMi as PEFT methods for transformers' Swin and ViT family.

``import mona_peft`` registers the methods with PEFT; do it before any PEFT load path
(``PeftModel.from_pretrained``, ``PeftConfig.from_pretrained``, ``AutoPeftModel...``).
"""

from . import classifiers, tuners  # noqa: F401  (registers every method with PEFT, and the classifiers with Auto)
from .tuners.adaptformer import AdaptFormerConfig, AdaptFormerLayer, AdaptFormerModel
from .tuners.architectures import (
    SUPPORTED_ARCHITECTURES,
    ArchitectureSpec,
    UnsupportedArchitectureError,
    supported_model_types,
)
from .tuners.config_utils import AdapterMismatchError, ConfigTypeError
from .tuners.houlsby import HoulsbyConfig, HoulsbyLayer, HoulsbyModel
from .tuners.mona import MonaConfig, MonaLayer, MonaModel
from .tuners.mona.inference import prepare_for_inference
from .tuners.vpt import VPTConfig, VPTLayer, VPTModel

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
    "prepare_for_inference",
    "supported_model_types",
]
