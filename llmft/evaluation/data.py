"""What every evaluator is given: the evaluation split, as records and as tokenized examples."""

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import torch


@dataclass
class EvalData:
    """The evaluation split.

    Attributes:
        records: conversation records (``{"id", "messages", ...}``); the last assistant message is the reference.
        tokenized: the same records tokenized for training (``input_ids``, ``labels``), for loss-based metrics
            (preference pairs: their prompt and chosen reply).
        pairs: when the records are preference pairs, both sides of each (``llmft.data.pairs.tokenize_pairs``);
            else None.
    """

    records: List[dict]
    tokenized: Any
    pairs: Optional[Any] = None


@contextlib.contextmanager
def evaluating(model) -> Iterator[torch.device]:
    """``model`` in eval mode for the block, its training mode restored after; yields the device of its weights."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def longest_first(lengths: Sequence[int]) -> List[int]:
    """Indices by decreasing length: batches of similar lengths (little padding), and the peak memory comes at once."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
