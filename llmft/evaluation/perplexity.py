"""Validation loss and perplexity, weighted by token, over the tokens the model is trained to produce."""

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llmft.data import pad_collate
from llmft.data.tokenize import IGNORE_INDEX
from llmft.evaluation.data import EvalData


class Perplexity:
    """Token-weighted mean cross-entropy over the labelled (assistant) tokens of the validation split, and its exp.

    Args:
        batch_size: sequences per forward pass.
    """

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, model, tokenizer, data: EvalData) -> dict:
        """Return ``eval_loss``, ``perplexity``, ``num_samples`` and ``total_tokens`` of the split (nothing for an
        empty split: ``data.val_ratio=0`` holds nothing out, and a perplexity of nothing is no figure)."""
        dataset = data.tokenized
        if len(dataset) == 0:
            return {}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        loader = DataLoader(dataset, batch_size=self.batch_size,
                            collate_fn=lambda f: pad_collate(f, tokenizer.pad_token_id))
        loss_sum, tokens = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss_sum += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((labels != IGNORE_INDEX).sum())
        model.train(was_training)
        loss = loss_sum / max(tokens, 1)
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "num_samples": len(dataset),
                "total_tokens": tokens}
