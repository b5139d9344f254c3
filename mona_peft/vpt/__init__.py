"""VPT: visual prompt tuning (shallow and deep), as a PEFT method."""

from .config import VPTConfig
from .layer import PromptEmbedding, VPTLayer
from .model import VPTModel

__all__ = ["PromptEmbedding", "VPTConfig", "VPTLayer", "VPTModel"]
