"""Answers to held-aside prompts: greedy (by default), batched with left padding, through the chat template."""

import json
from pathlib import Path
from typing import List, Optional

import torch

from llmft.errors import DataError


def read_prompts(file: str) -> List[dict]:
    """Read a JSON list of prompts: strings, or objects with ``prompt`` and optional ``reference``."""
    path = Path(file).expanduser()
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"prompt file {file} does not exist (eval.prompts.file).") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}).") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{file} must hold a non-empty JSON list of prompts.")
    return [{"prompt": i, "reference": None} if isinstance(i, str) else
            {"prompt": i["prompt"], "reference": i.get("reference")} for i in items]


class PromptAnswers:
    """Generate the model's answers to a list of prompts.

    Args:
        file: a JSON list of prompts (strings, or ``{"prompt", "reference"}`` objects).
        system_prompt: a system message put before each prompt (the one the training data uses), or None.
        max_new_tokens: the longest answer, in tokens.
        batch_size: prompts generated together.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (with ``do_sample``).
        top_p: nucleus sampling threshold (with ``do_sample``).
    """

    def __init__(self, file: str, system_prompt: Optional[str] = None, max_new_tokens: int = 96,
                 batch_size: int = 8, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0):
        self.prompts = read_prompts(file)
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p) if do_sample else \
            dict(do_sample=False)

    def __call__(self, model, tokenizer, dataset=None) -> dict:
        """Return ``{"answers": [{"prompt", "answer", "reference"}, ...]}``."""
        answers = []
        for start in range(0, len(self.prompts), self.batch_size):
            chunk = self.prompts[start:start + self.batch_size]
            for item, text in zip(chunk, self._generate(model, tokenizer, [c["prompt"] for c in chunk])):
                answers.append({"prompt": item["prompt"], "answer": text, "reference": item["reference"]})
        return {"answers": answers}

    @torch.no_grad()
    def _generate(self, model, tokenizer, prompts: List[str]) -> List[str]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        texts = [tokenizer.apply_chat_template(system + [{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        was_training = model.training
        model.eval()
        inputs = inputs.to(next(model.parameters()).device)
        out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             **self.sampling)
        model.train(was_training)
        return [t.strip() for t in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                          skip_special_tokens=True)]
