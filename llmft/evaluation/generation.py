"""Generation shared by the evaluators: chat template, left padding, batches, stop at end of turn."""

from typing import Any, Dict, List, Optional, Sequence

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


@torch.no_grad()
def generate(model, tokenizer, conversations: Sequence[List[Dict[str, Any]]], max_new_tokens: int = 96,
             batch_size: int = 8, tools: Optional[Sequence[Optional[Sequence[dict]]]] = None,
             **sampling) -> List[str]:
    """Answer each conversation (ending with a user or tool turn) with the model, through its chat template.

    Greedy unless ``sampling`` says ``do_sample=True``; batched with left padding; stops at end of turn.
    ``tools``: each conversation's function definitions (None, or None for one: it defines none).

    Returns:
        One answer per conversation, without the prompt and special tokens.
    """
    answers: List[str] = []
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        device = next(model.parameters()).device
        for start in range(0, len(conversations), batch_size):
            texts = chat_prompts(tokenizer, conversations[start:start + batch_size],
                                 tools[start:start + batch_size] if tools else None)
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer),
                                 **({"do_sample": False} | sampling))
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
