"""Probe inputs for the export's self-check, and the comparison of two models' logits on them."""

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from llmft.data import pad_collate
from llmft.errors import LlmftError
from llmft.runs import FinishedRun

PROBES = ["What does a Kubernetes Service do?", "Explain LoRA in one sentence.", "Write a haiku about GPUs."]


@dataclass
class Probes:
    """What the GGUF check compares: the probe batch with base + adapter's logits on it, the held-aside prompts
    with base + adapter's greedy answers, a training conversation for the parity check, the run's system prompt."""

    batch: dict
    reference: torch.Tensor
    prompts: List[List[dict]] = field(default_factory=list)
    adapter_answers: List[str] = field(default_factory=list)
    conversation: List[dict] = field(default_factory=list)
    system_prompt: Optional[str] = None
    sampling: dict = field(default_factory=dict)


def validation_records(run: FinishedRun) -> list:
    """The run's validation records, or none when its data moved since training."""
    try:
        from llmft.builders import read_splits

        return read_splits(run.cfg).val
    except Exception:  # the data moved since training: fixed prompts check the export just as well
        return []


def probe_batch(records: list, tokenizer, count: int = 4) -> dict:
    """A padded batch of chat-formatted prompts: the first validation records' prompts, else fixed ones."""
    prompts = [r["messages"][:-1] for r in records[:count]]
    prompts = prompts or [[{"role": "user", "content": p}] for p in PROBES]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    features = [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
    batch = pad_collate(features, tokenizer.pad_token_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def held_aside(run: FinishedRun, count: int = 5) -> tuple:
    """``(conversations, system prompt, sampling)``: the run's held-aside prompts (eval.prompts), else fixed ones,
    and its generation settings in Ollama's words (temperature 0: greedy, as llmft evaluates)."""
    from llmft.evaluation.prompts import read_prompts

    node = run.cfg.eval.get("prompts") if run.cfg.get("eval") else None
    system = node.get("system_prompt") if node else None
    try:
        prompts = [p["prompt"] for p in read_prompts(node.file)][:count] if node else PROBES
    except LlmftError:  # the prompt file moved since training
        prompts = PROBES
    head = [{"role": "system", "content": system}] if system else []
    sampling = {"temperature": node.get("temperature", 1.0), "top_p": node.get("top_p", 1.0)} \
        if node and node.get("do_sample") else {"temperature": 0}
    return [head + [{"role": "user", "content": p}] for p in prompts], system, sampling


def max_logit_difference(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest absolute difference between two logit tensors over the unpadded positions."""
    return float((a - b).abs().amax(dim=-1)[mask.bool()].max())
