"""Mona: multi-cognitive visual adapter, as a PEFT method."""

from .config import MonaConfig
from .layer import MonaLayer, MultiCognitiveFilter, ScaledLayerNorm
from .model import MonaModel

__all__ = ["MonaConfig", "MonaLayer", "MonaModel", "MultiCognitiveFilter", "ScaledLayerNorm"]
