"""Answers to held-aside prompts, from a JSON file: the before/after examples a person reads."""

import json
from pathlib import Path
from typing import List, Optional, Tuple

from llmft.errors import DataError
from llmft.evaluation.generation import generate, generate_pairs
from llmft.evaluation.scores import score_pairs


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
        raise DataError(f"{file} must hold a non-empty JSON list of prompts (strings or {{\"prompt\", "
                        "\"reference\"}} objects).")
    bad = [i for i, item in enumerate(items) if not (isinstance(item, str) or
                                                     (isinstance(item, dict) and isinstance(item.get("prompt"), str)))]
    if bad:
        raise DataError(f"{file}: item {bad[0]} is neither a string nor an object with a \"prompt\" string.")
    return [{"prompt": i, "reference": None} if isinstance(i, str) else
            {"prompt": i["prompt"], "reference": i.get("reference")} for i in items]


class PromptAnswers:
    """Generate the model's answers to a list of prompts, scored against their references where given.

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
        self.sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else {}

    def __call__(self, model, tokenizer, data=None) -> dict:
        """Return ``{"answers": [{"prompt", "answer", "reference", "scores"}, ...]}``."""
        return self._results(generate(model, tokenizer, self._conversations(), self.max_new_tokens,
                                      self.batch_size, **self.sampling))

    def pair(self, model, tokenizer, data=None) -> Tuple[dict, dict]:
        """The base model's results and the fine-tuned model's, answered in the same batches (``generate_pairs``)."""
        base, tuned = generate_pairs(model, tokenizer, self._conversations(), self.max_new_tokens, self.batch_size,
                                     **self.sampling)
        return self._results(base), self._results(tuned)

    def _conversations(self) -> List[List[dict]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [system + [{"role": "user", "content": p["prompt"]}] for p in self.prompts]

    def _results(self, texts: List[str]) -> dict:
        answers = [{"prompt": p["prompt"], "answer": t, "reference": p["reference"]}
                   for p, t in zip(self.prompts, texts)]
        scored = [a for a in answers if a["reference"]]
        for answer, scores in zip(scored, score_pairs([a["answer"] for a in scored], [a["reference"] for a in scored])):
            answer["scores"] = scores
        return {"answers": answers}
