"""Houlsby's bottleneck adapter (after the attention and after the MLP), as a PEFT method."""

from .config import HoulsbyConfig
from .layer import HoulsbyLayer
from .model import HoulsbyModel

__all__ = ["HoulsbyConfig", "HoulsbyLayer", "HoulsbyModel"]
