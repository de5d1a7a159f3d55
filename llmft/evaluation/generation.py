"""Generation shared by the evaluators: chat template, left padding, batches, stop at end of turn."""

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from llmft.data.rendering import render


def stop_token_ids(model, tokenizer) -> List[int]:
    """The tokenizer's EOS and every EOS the model's generation config names (e.g. ``<|im_end|>`` and
    ``<|endoftext|>`` for Qwen), so that generation stops at the end of the assistant's turn."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    return sorted({t for t in [tokenizer.eos_token_id, *configured] if t is not None})


def chat_prompts(tokenizer, conversations: Sequence[Sequence[Dict[str, Any]]],
                 tools: Optional[Sequence[Optional[Sequence[dict]]]] = None) -> List[str]:
    """The text the model answers each conversation from: the chat template with the generation prompt, and the
    conversation's function definitions (``tools[i]``; None: none) passed as ``tools=``, rendered as training
    renders them (``llmft.data.rendering.render``), so that a tool-calling record is prompted as it was trained."""
    return [render(tokenizer, c, tools[i] if tools else None, add_generation_prompt=True)
            for i, c in enumerate(conversations)]


BASE = "__base__"  # peft's name for the rows of a mixed-adapter batch that run without any adapter


def can_pair(model) -> bool:
    """Whether the base model's and the fine-tuned model's answers can come from one batch, each row with or
    without the adapter (peft's mixed-adapter batches): a peft model with one active, unmerged LoRA adapter
    without DoRA (which peft cannot mix)."""
    configs = getattr(model, "peft_config", None) or {}
    config = configs.get(getattr(model, "active_adapter", None))
    if config is None or config.peft_type != "LORA" or getattr(config, "use_dora", False):
        return False
    return not any(getattr(module, "merged", False) for module in model.modules())


@contextlib.contextmanager
def contiguous_head(model):
    """Hand the output projection a contiguous input while generating. ``generate`` projects only the prompt's
    last position, a strided slice of the hidden states, and torch's CPU matrix multiplication of such a 3-D slice
    with a vocabulary-sized weight copies the weight once per row: 0.69 s instead of 6 ms for five SmolLM2 rows
    (49,152 x 576, bf16), at every prompt."""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]), prepend=True) \
        if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@torch.inference_mode()
def generate(model, tokenizer, conversations: Sequence[List[Dict[str, Any]]], max_new_tokens: int = 96,
             batch_size: int = 8, tools: Optional[Sequence[Optional[Sequence[dict]]]] = None,
             **sampling) -> List[str]:
    """Answer each conversation (ending with a user or tool turn) with the model, through its chat template.

    Greedy unless ``sampling`` says ``do_sample=True``; batched with left padding; stops at end of turn.
    ``tools``: each conversation's function definitions (None, or None for one: it defines none).

    Returns:
        One answer per conversation, without the prompt and special tokens.
    """
    return _answers(model, tokenizer, conversations, max_new_tokens, batch_size, tools, None, sampling)


@torch.inference_mode()
def generate_pairs(model, tokenizer, conversations: Sequence[List[Dict[str, Any]]], max_new_tokens: int = 96,
                   batch_size: int = 8, tools: Optional[Sequence[Optional[Sequence[dict]]]] = None,
                   **sampling) -> Tuple[List[str], List[str]]:
    """The base model's and the fine-tuned model's answers (``generate``'s), from the same batches: each batch
    of ``batch_size`` conversations runs as ``2 x batch_size`` rows, the first half without the adapter. A small
    model's generation on a CPU is bound by reading the weights at every new token, so both answers cost about
    what one did. Needs ``can_pair(model)``."""
    answers = _answers(model, tokenizer, conversations, max_new_tokens, batch_size, tools,
                       [BASE, model.active_adapter], sampling)
    return answers[0::2], answers[1::2]


def _answers(model, tokenizer, conversations, max_new_tokens, batch_size, tools, adapters, sampling) -> List[str]:
    """Each conversation's answer; with ``adapters``, one answer per adapter name for each, in that order."""
    answers: List[str] = []
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        device = next(model.parameters()).device
        for start in range(0, len(conversations), batch_size):
            texts = chat_prompts(tokenizer, conversations[start:start + batch_size],
                                 tools[start:start + batch_size] if tools else None)
            rows = {}
            if adapters:
                texts = [text for text in texts for _ in adapters]
                rows["adapter_names"] = list(adapters) * (len(texts) // len(adapters))
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with contiguous_head(model):
                out = model.generate(**inputs, **rows, max_new_tokens=max_new_tokens, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stop_token_ids(model, tokenizer),
                                     **({"do_sample": False} | sampling))
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
