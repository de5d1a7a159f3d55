"""Supervised fine-tuning: next-token cross-entropy on the labelled (assistant) tokens."""

import functools
from typing import Callable, Dict, List, Optional, Tuple

import torch
from datasets import Dataset

from llmft.data.batching import pack_collate
from llmft.data.collate import pad_collate
from llmft.data.tokenize import IGNORE_INDEX, tokenize_records
from llmft.loss import lm_loss_sum


class SFT:
    """Supervised fine-tuning: next-token cross-entropy on the labelled (assistant) tokens.

    The loss is computed without full logits (``llmft.loss.lm_loss_sum``): only the labelled positions are
    projected to the vocabulary, ``chunk_tokens`` at a time.

    Args:
        chunk_tokens: labelled positions projected to the vocabulary at once (memory: chunk_tokens x vocabulary
            x 4 bytes, forward and backward).
    """

    pairs = False  # reads conversations, not preference pairs

    def __init__(self, chunk_tokens: int = 512):
        self.chunk_tokens = chunk_tokens

    @staticmethod
    def tokenize(records: List[dict], tokenizer, *, max_seq_length: int, train_on_prompt: bool = False,
                 split: str = "train", cache_dir: Optional[str] = None) -> Tuple[Dataset, int]:
        """The records' training examples (``llmft.data.tokenize.tokenize_records``) and how many were dropped."""
        return tokenize_records(records, tokenizer, max_seq_length=max_seq_length, train_on_prompt=train_on_prompt,
                                split=split, cache_dir=cache_dir)

    @staticmethod
    def collate(pad_token_id: int, packing: bool) -> Callable:
        """Padded micro-batches, or packed ones (one row, positions restarting at each record)."""
        return pack_collate if packing else functools.partial(pad_collate, pad_token_id=pad_token_id)

    @staticmethod
    def lengths(dataset: Dataset) -> List[int]:
        """The tokens of each example."""
        return [len(ids) for ids in dataset["input_ids"]]

    @staticmethod
    def units(batch: dict) -> int:
        """The labelled next-token positions of ``batch``."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        """The summed cross-entropy over the labelled positions."""
        return lm_loss_sum(model, batch, self.chunk_tokens)[0]

    def loss_and_figures(self, model, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The summed loss, and no extra figures."""
        return self.loss_sum(model, batch), {}
