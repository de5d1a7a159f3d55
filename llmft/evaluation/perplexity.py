"""Validation loss and perplexity, weighted by token, over the tokens the model is trained to produce."""

import math

import torch

from llmft.data import pad_collate
from llmft.evaluation.data import BatchedEvaluator, EvalData, evaluating
from llmft.loss import lm_loss_sum


class Perplexity(BatchedEvaluator):
    """Token-weighted mean cross-entropy over the labelled (assistant) tokens of the validation split, and its exp.

    The loss is the training loss's computation (``llmft.loss.lm_loss_sum``): no full logits, only the labelled
    positions projected to the vocabulary, ``chunk_tokens`` at a time.

    Args:
        batch_size: sequences per forward pass.
        chunk_tokens: labelled positions projected to the vocabulary at once.
    """

    @torch.no_grad()
    def __call__(self, model, tokenizer, data: EvalData) -> dict:
        """Return ``eval_loss``, ``perplexity``, ``num_samples`` and ``total_tokens`` of the split (nothing for an
        empty split: ``data.val_ratio=0`` holds nothing out, and a perplexity of nothing is no figure)."""
        dataset = data.tokenized
        if len(dataset) == 0:
            return {}
        lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        loss_sum, tokens = 0.0, 0
        with evaluating(model) as device:
            for _, batch in self.batches(dataset, lengths, pad_collate, tokenizer.pad_token_id, device):
                summed, count = lm_loss_sum(model, batch, self.chunk_tokens)
                loss_sum, tokens = loss_sum + float(summed), tokens + count
        loss = loss_sum / max(tokens, 1)
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "num_samples": len(dataset),
                "total_tokens": tokens}
