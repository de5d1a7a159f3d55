"""What every evaluator is given: the evaluation split, as records and as tokenized examples."""

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

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


class BatchedEvaluator:
    """What the evaluators that score labelled tokens share (perplexity, preference): how they batch the split.

    Args:
        batch_size: examples per forward pass.
        chunk_tokens: labelled positions projected to the vocabulary at once (``llmft.loss``).
    """

    def __init__(self, batch_size: int = 8, chunk_tokens: int = 2048):
        self.batch_size = batch_size
        self.chunk_tokens = chunk_tokens

    def batches(self, examples: Sequence[Any], lengths: Sequence[int], collate: Callable, pad_token_id: int,
                device: torch.device) -> Iterator[Tuple[List[int], dict]]:
        """``examples`` longest first, ``batch_size`` at a time: each batch's indices, and the batch that
        ``collate(examples, pad_token_id)`` makes of them, on ``device``."""
        order = longest_first(lengths)
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            batch = collate([examples[i] for i in indices], pad_token_id)
            yield indices, {k: v.to(device) for k, v in batch.items()}
