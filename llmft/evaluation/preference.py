"""Preference figures on the validation pairs: does the model rank the chosen reply above the rejected one?"""

from typing import Tuple

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from llmft.data.pairs import pair_collate, pair_lengths
from llmft.evaluation.data import BatchedEvaluator, EvalData, evaluating
from llmft.loss import sequence_logps
from llmft.objectives.preference import reference_model


class PreferenceAccuracy(BatchedEvaluator):
    """Preference accuracy and reward margin on the validation pairs (nothing when the data are not pairs).

    For a model with its adapter active, the implicit DPO reward of a reply is its log-probability minus the base
    model's (the adapter disabled): ``preference_accuracy`` is the share of pairs whose chosen reply gets the
    higher reward, ``reward_margin`` the mean of chosen minus rejected reward (in nats, without beta). The base
    model is its own reference: its ``preference_accuracy`` is its log-probability ranking (chosen above
    rejected) and its margin 0. ``logp_accuracy`` (that ranking, for either model), ``chosen_logp`` and
    ``rejected_logp`` (mean summed log-probabilities of the replies) are reported for both.

    Args:
        batch_size: pairs per forward pass (two rows each).
        chunk_tokens: labelled positions projected to the vocabulary at once.
    """

    @torch.no_grad()
    def __call__(self, model, tokenizer, data: EvalData) -> dict:
        """Return ``{"metrics": {...}}`` with the figures above (``{}`` without validation pairs)."""
        if data.pairs is None or len(data.pairs) == 0:
            return {}
        with evaluating(model):
            chosen, rejected = self.logps(model, tokenizer, data.pairs)
            if adapter_active(model):
                with reference_model(model):
                    ref_chosen, ref_rejected = self.logps(model, tokenizer, data.pairs)
            else:
                ref_chosen, ref_rejected = torch.zeros_like(chosen), torch.zeros_like(rejected)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        return {"metrics": {"preference_accuracy": float((margin > 0).float().mean()),
                            "reward_margin": float(margin.mean()) if adapter_active(model) else 0.0,
                            "logp_accuracy": float((chosen > rejected).float().mean()),
                            "chosen_logp": float(chosen.mean()), "rejected_logp": float(rejected.mean())}}

    def logps(self, model, tokenizer, pairs) -> Tuple[torch.Tensor, torch.Tensor]:
        """The summed log-probabilities of the chosen and the rejected reply of every pair, in dataset order."""
        device = next(model.parameters()).device
        out = torch.zeros(len(pairs), 2, dtype=torch.float64)
        for indices, batch in self.batches(pairs, pair_lengths(pairs), pair_collate, tokenizer.pad_token_id, device):
            sums, _ = sequence_logps(model, batch, self.chunk_tokens)
            out[indices] = sums.double().cpu().view(2, -1).T
        return out[:, 0], out[:, 1]


def adapter_active(model) -> bool:
    """Whether ``model`` has adapter layers and they are enabled (not inside ``disable_adapter()``)."""
    layers = (m for m in model.modules() if isinstance(m, BaseTunerLayer))
    first = next(layers, None)
    return first is not None and not first.disable_adapters
