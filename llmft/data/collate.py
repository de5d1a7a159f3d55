"""Batching: the one place where sequences become padded tensors (the seam for packing later)."""

from typing import Dict, List

import torch

from llmft.data.tokenize import IGNORE_INDEX


def pad_collate(features: List[dict], pad_token_id: int, padding_side: str = "right") -> Dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` of a list of examples to the longest one.

    Args:
        features: examples with ``input_ids`` and ``labels`` lists.
        pad_token_id: id used for padding (masked by ``attention_mask`` and labelled -100).
        padding_side: ``right`` for training, ``left`` for generation.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each ``[batch, longest]``.
    """
    longest = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n, pad = len(f["input_ids"]), longest - len(f["input_ids"])
        fill = lambda seq, value: ([value] * pad + list(seq)) if padding_side == "left" else (list(seq) + [value] * pad)  # noqa: E731
        batch["input_ids"].append(fill(f["input_ids"], pad_token_id))
        batch["attention_mask"].append(fill([1] * n, 0))
        batch["labels"].append(fill(f.get("labels", f["input_ids"]), IGNORE_INDEX))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
