"""Probe inputs for the export's self-check, and the comparison of two models' logits on them."""

import torch

from llmft.data import pad_collate
from llmft.runs import FinishedRun

PROBES = ["What does a Kubernetes Service do?", "Explain LoRA in one sentence.", "Write a haiku about GPUs."]


def probe_batch(run: FinishedRun, tokenizer, count: int = 4) -> dict:
    """A padded batch of chat-formatted prompts: the run's validation prompts if readable, else fixed ones."""
    try:
        from llmft.pipeline import read_splits

        prompts = [r["messages"][:-1] for r in read_splits(run.cfg).val[:count]]
    except Exception:  # the data moved since training: fixed prompts check the merge just as well
        prompts = [[{"role": "user", "content": p}] for p in PROBES]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    features = [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
    batch = pad_collate(features, tokenizer.pad_token_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def max_logit_difference(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest absolute difference between two logit tensors over the unpadded positions."""
    return float((a - b).abs().amax(dim=-1)[mask.bool()].max())
