"""Data: conversation records in one schema, read from files, split, tokenized with the chat template, batched."""

from llmft.data.collate import pad_collate
from llmft.data.records import validate_record
from llmft.data.splits import Splits, load_splits
from llmft.data.tokenize import tokenize_records

__all__ = ["Splits", "load_splits", "pad_collate", "tokenize_records", "validate_record"]
