"""llmft: Hydra-composed LoRA and QLoRA fine-tuning of small instruction-tuned language models."""

from llmft.config import resolvers as _resolvers  # noqa: F401  (registers ${dtype:...} and ${sample_data:...})

__version__ = "0.1.0"
