"""Preference objectives: DPO (against the base model as reference) and ORPO (no reference), on preference pairs.

A micro-batch of ``n`` pairs is one padded batch of ``2n`` rows (every chosen side, then every rejected side:
``llmft.data.pairs.pair_collate``), so both replies go through the model in one forward pass; each row's summed
reply log-probability comes from ``llmft.loss.sequence_logps`` (chunked: no full-vocabulary logits). The loss is
averaged over pairs (``units``).

DPO's reference model is the policy with its adapter disabled (peft's ``disable_adapter()``): the same weights in
memory, one extra forward pass under ``no_grad`` in the same step, in eval mode (no dropout), so the reference of
a pair is the base model's figure whatever step computes it and a resumed run computes the same values.
"""

import contextlib
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from datasets import Dataset

from llmft.data.pairs import pair_collate, pair_lengths, tokenize_pairs
from llmft.errors import ConfigError
from llmft.loss import sequence_logps

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0,
               loss_type: str = "sigmoid") -> torch.Tensor:
    """The DPO loss of each pair from the log-probabilities of its replies under the policy and the reference.

    ``sigmoid`` (Rafailov et al. 2023, with the conservative label smoothing of cDPO):
    ``-(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)``, ``h = (pc - rc) - (pr - rr)``;
    ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``, on log-probabilities averaged per token (as TRL does).
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing


def orpo_losses(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float) -> torch.Tensor:
    """The ORPO loss of each pair (Hong et al. 2024) from the mean per-token log-probability of each reply:
    the chosen reply's negative log-likelihood plus ``-beta log sigmoid(log odds(chosen) - log odds(rejected))``,
    with ``log odds(p) = log p - log(1 - p)``."""
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    return -chosen_mean - beta * F.logsigmoid(log_odds)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, without cancellation on either side of ``-log 2``."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@contextlib.contextmanager
def reference_model(model: torch.nn.Module):
    """While open, ``model`` (a peft model, possibly wrapped) is its base: adapter disabled, eval mode."""
    peft_model = extract_model_from_parallel(model, keep_fp32_wrapper=True)
    training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            yield model
    finally:
        peft_model.train(training)


def reward_figures(chosen: torch.Tensor, rejected: torch.Tensor) -> Dict[str, float]:
    """The implicit rewards of a batch's pairs, each summed over its pairs (the loop averages them)."""
    return {"rewards/chosen": float(chosen.sum()), "rewards/rejected": float(rejected.sum()),
            "rewards/margin": float((chosen - rejected).sum()), "rewards/accuracy": float((chosen > rejected).sum())}


class _Pairwise:
    """What DPO and ORPO share: pairs in, one batch of both sides, a loss averaged over pairs."""

    pairs = True  # reads preference pairs

    def __init__(self, beta: float, chunk_tokens: int):
        if not beta > 0:
            raise ConfigError(f"objective.beta={beta} must be above 0 (the strength of the preference term; "
                              "0.1 is usual). Set e.g. objective.beta=0.1.")
        self.beta, self.chunk_tokens = float(beta), chunk_tokens

    @staticmethod
    def tokenize(records: List[dict], tokenizer, *, max_seq_length: int, train_on_prompt: bool = False,
                 split: str = "train", cache_dir: Optional[str] = None) -> Tuple[Dataset, int]:
        """Both sides of each pair (``llmft.data.pairs.tokenize_pairs``) and how many pairs were dropped."""
        if train_on_prompt:
            raise ConfigError("data.train_on_prompt=true trains the prompt's tokens, and a preference objective "
                              "compares the two replies to one prompt: it has nothing to train in the prompt. "
                              "Leave data.train_on_prompt=false with objective=dpo or orpo.")
        return tokenize_pairs(records, tokenizer, max_seq_length, split, cache_dir)

    @staticmethod
    def collate(pad_token_id: int, packing: bool) -> Callable:
        """One padded batch of both sides of each pair; packing is refused."""
        if packing:
            raise ConfigError("data.packing=true packs records into one row, and a preference objective scores "
                              "the two replies of each pair as two rows of one padded batch. Leave "
                              "data.packing=false with objective=dpo or orpo (data.group_by_length=true keeps the "
                              "padding low).")
        return lambda features: pair_collate(features, pad_token_id)

    lengths = staticmethod(pair_lengths)

    @staticmethod
    def units(batch: dict) -> int:
        """The pairs of ``batch`` (half its rows)."""
        return int(batch["input_ids"].shape[0]) // 2

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        """The summed loss over the pairs of ``batch``."""
        return self.loss_and_figures(model, batch)[0]

    def logps(self, model, batch: dict, mean: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """The chosen and the rejected replies' log-probabilities (summed, or averaged per token)."""
        sums, counts = sequence_logps(model, batch, self.chunk_tokens)
        if mean:
            sums = sums / counts.clamp(min=1)
        n = sums.shape[0] // 2
        return sums[:n], sums[n:]


class DPO(_Pairwise):
    """Direct preference optimisation against the base model (the adapter disabled) as reference.

    Args:
        beta: the strength of the KL constraint to the reference (0.1 is usual; lower lets the policy move more).
        label_smoothing: the share of pairs assumed mislabelled (cDPO), in [0, 0.5); ``sigmoid`` only.
        loss_type: ``sigmoid`` (DPO) or ``ipo`` (IPO: a squared loss on per-token mean log-probabilities).
        chunk_tokens: labelled positions projected to the vocabulary at once.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
                 chunk_tokens: int = 512):
        super().__init__(beta, chunk_tokens)
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"objective.loss_type={loss_type} is not one of {', '.join(LOSS_TYPES)}.")
        if not 0 <= label_smoothing < 0.5 or (label_smoothing and loss_type != "sigmoid"):
            raise ConfigError(f"objective.label_smoothing={label_smoothing} must be in [0, 0.5), and 0 with "
                              "objective.loss_type=ipo.")
        self.label_smoothing, self.loss_type = float(label_smoothing), loss_type

    def loss_and_figures(self, model, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The summed DPO loss over the pairs of ``batch``, and their implicit rewards ``beta (policy - ref)``."""
        mean = self.loss_type == "ipo"
        with torch.no_grad(), reference_model(model):
            ref_chosen, ref_rejected = self.logps(model, batch, mean)
        chosen, rejected = self.logps(model, batch, mean)
        losses = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing,
                            self.loss_type)
        with torch.no_grad():
            figures = reward_figures(self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected))
        return losses.sum(), figures


class ORPO(_Pairwise):
    """Odds-ratio preference optimisation: the SFT loss on the chosen reply plus an odds-ratio term; no reference.

    Args:
        beta: the weight of the odds-ratio term (the paper's lambda; 0.1 is usual).
        chunk_tokens: labelled positions projected to the vocabulary at once.
    """

    def __init__(self, beta: float = 0.1, chunk_tokens: int = 512):
        super().__init__(beta, chunk_tokens)

    def loss_and_figures(self, model, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The summed ORPO loss over the pairs of ``batch``, and their rewards ``beta x mean log-probability``."""
        chosen, rejected = self.logps(model, batch, mean=True)
        losses = orpo_losses(chosen, rejected, self.beta)
        with torch.no_grad():
            figures = reward_figures(self.beta * chosen, self.beta * rejected)
        return losses.sum(), figures
