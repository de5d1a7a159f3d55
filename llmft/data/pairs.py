"""Preference pairs for training: both replies through the chat template, the loss only on each reply's tokens.

A pair record is a conversation record (``messages``: the prompt and the chosen reply) with the rejected reply
beside it (``rejected``: one assistant message), as ``data_format=preference`` and ``llmft-prepare`` write it.
Each side is rendered as ``prompt + [reply]``: only that last reply (and its end-of-turn token) is labelled;
assistant turns inside the prompt are context. A side longer than ``max_seq_length`` loses tokens from the left
of its prompt first (the prompt's end, next to the replies, is kept), and only when the prompt is down to half of
``max_seq_length`` is the reply cut at its end; both sides keep the same number of prompt tokens.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llmft.data.collate import pad_collate
from llmft.data.records import PreferencePair
from llmft.data.tokenize import IGNORE_INDEX, encode_records, tokenize_conversation

SIDES = ("chosen", "rejected")
COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def pair_of(record: dict) -> PreferencePair:
    """The ``PreferencePair`` of a pair record."""
    return PreferencePair(record["messages"][:-1], record["messages"][-1], record["rejected"], record.get("tools"))


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair,
                  max_seq_length: int) -> Optional[Dict[str, List[int]]]:
    """The token ids and labels of both sides of ``pair`` (``COLUMNS``), or None when truncation leaves one side
    without a labelled token."""
    context = [{**m, "train": False} if m["role"] == "assistant" else m for m in pair.prompt]
    sides = [tokenize_conversation(tokenizer, [*context, {**reply, "train": True}], 1 << 30, False, pair.tools)
             for reply in (pair.chosen, pair.rejected)]
    starts = [next((i for i, t in enumerate(s["labels"]) if t != IGNORE_INDEX), len(s["labels"])) for s in sides]
    longest_reply = max(len(s["labels"]) - start for s, start in zip(sides, starts))
    keep = max(max_seq_length - longest_reply, max_seq_length // 2)  # prompt tokens each side keeps
    out: Dict[str, List[int]] = {}
    for name, side, start in zip(SIDES, sides, starts):
        cut = max(0, start - keep)
        ids, labels = side["input_ids"][cut:cut + max_seq_length], side["labels"][cut:cut + max_seq_length]
        if all(t == IGNORE_INDEX for t in labels[1:]):
            return None
        out[f"{name}_input_ids"], out[f"{name}_labels"] = ids, labels
    return out


def tokenize_pairs(records: List[dict], tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                   split: str = "train", cache_dir: Optional[str] = None) -> Tuple[Dataset, int]:
    """Tokenize pair records into a ``datasets.Dataset`` of ``COLUMNS`` (cached like conversations).

    Returns:
        The dataset (``id``, ``record`` and ``COLUMNS``) and the number of pairs dropped.

    Raises:
        DataError: no pair keeps a labelled token on both sides, or the chat template refuses a record.
    """
    def examples_of(stored: list) -> List[Dict[str, List[int]]]:
        messages, tools, rejected = stored
        example = tokenize_pair(tokenizer, PreferencePair(messages[:-1], messages[-1], rejected, tools),
                                max_seq_length)
        return [example] if example is not None else []

    return encode_records(records, tokenizer, examples_of, COLUMNS, split, cache_dir, max_seq_length, "pairs")


def pair_collate(features: Sequence[dict], pad_token_id: int) -> Dict[str, torch.Tensor]:
    """One padded batch of ``2 x len(features)`` rows: every pair's chosen side, then every rejected side in the
    same order, so that one forward pass scores both (``input_ids``, ``attention_mask``, ``labels``)."""
    rows = [{"input_ids": f[f"{side}_input_ids"], "labels": f[f"{side}_labels"]} for side in SIDES for f in features]
    return pad_collate(rows, pad_token_id)


def pair_lengths(dataset: Dataset) -> List[int]:
    """Each pair's width in a padded batch: its longer side."""
    return [max(len(c), len(r)) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"])]
