"""Data: input formats converted to one conversation schema, split, tokenized with the chat template, batched.

The names below load on first use, so that ``llmft-prepare`` and ``llmft-synth`` start without torch or
transformers.
"""

from llmft.lazy import lazy_names

_EXPORTS = {
    "Splits": "llmft.data.splits", "load_splits": "llmft.data.splits", "pad_collate": "llmft.data.collate",
    "tokenize_records": "llmft.data.tokenize", "validate_record": "llmft.data.records",
    "prepare": "llmft.data.prepare", "Collector": "llmft.data.convert",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_names(__name__, _EXPORTS)
