"""Models: load a pretrained causal LM (hub, local folder, or offline GGUF) or build a tiny one in-process."""

from llmft.models.loading import LoadedModel, load_pretrained
from llmft.models.tiny import build_tiny

__all__ = ["LoadedModel", "build_tiny", "load_pretrained"]
