"""Data: input formats converted to one conversation schema, split, tokenized with the chat template, batched.

The names below load on first use, so that ``llmft-prepare`` and ``llmft-synth`` start without torch or
transformers.
"""

import importlib

_EXPORTS = {
    "Splits": "llmft.data.splits", "load_splits": "llmft.data.splits", "pad_collate": "llmft.data.collate",
    "tokenize_records": "llmft.data.tokenize", "validate_record": "llmft.data.records",
    "prepare": "llmft.data.prepare", "Collector": "llmft.data.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmft.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
