"""Objectives: how a batch becomes a loss, the seam between the data and the one training loop.

An objective tells the loop two things about a batch: ``units(batch)``, what its loss is averaged over (labelled
tokens for supervised fine-tuning), so that gradient accumulation weighs every unit alike however the window's
micro-batches are cut; and ``loss_sum(model, batch)``, the summed loss over those units. Each option of the
``objective`` config group names one through ``_target_``.
"""

import torch

from llmft.data.tokenize import IGNORE_INDEX
from llmft.loss import lm_loss_sum


class SFT:
    """Supervised fine-tuning: next-token cross-entropy on the labelled (assistant) tokens.

    The loss is computed without full logits (``llmft.loss.lm_loss_sum``): only the labelled positions are
    projected to the vocabulary, ``chunk_tokens`` at a time.

    Args:
        chunk_tokens: labelled positions projected to the vocabulary at once (memory: chunk_tokens x vocabulary
            x 4 bytes, forward and backward).
    """

    def __init__(self, chunk_tokens: int = 512):
        self.chunk_tokens = chunk_tokens

    @staticmethod
    def units(batch: dict) -> int:
        """The labelled next-token positions of ``batch``."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        """The summed cross-entropy over the labelled positions."""
        return lm_loss_sum(model, batch, self.chunk_tokens)[0]
