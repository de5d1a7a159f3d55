"""Reference metrics over the evaluation split: the model answers each record's prompt, scored against its reply."""

from typing import List, Optional, Sequence, Tuple

from llmft.evaluation.data import EvalData
from llmft.evaluation.generation import generate, generate_pairs
from llmft.evaluation.scores import METRICS, corpus_scores


class ReferenceMetrics:
    """Exact match, ROUGE-L, BLEU and chrF of generated answers against the split's last assistant messages.

    Args:
        metrics: which of ``exact_match``, ``rouge_l``, ``bleu``, ``chrf`` to compute.
        max_samples: score only the first N records (None: all).
        max_new_tokens: the longest answer, in tokens.
        batch_size: prompts generated together.
    """

    def __init__(self, metrics: Sequence[str] = METRICS, max_samples: Optional[int] = None,
                 max_new_tokens: int = 128, batch_size: int = 8):
        self.metrics = list(metrics)
        self.max_samples = max_samples
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def __call__(self, model, tokenizer, data: EvalData) -> dict:
        """Return ``{"metrics": {name: value}, "num_scored": n}``."""
        prompts, tools, references = reference_prompts(self._records(data))
        return self._results(generate(model, tokenizer, prompts, self.max_new_tokens, self.batch_size, tools=tools),
                             references)

    def pair(self, model, tokenizer, data: EvalData) -> Tuple[dict, dict]:
        """The base model's results and the fine-tuned model's, answered in the same batches (``generate_pairs``)."""
        prompts, tools, references = reference_prompts(self._records(data))
        base, tuned = generate_pairs(model, tokenizer, prompts, self.max_new_tokens, self.batch_size, tools=tools)
        return self._results(base, references), self._results(tuned, references)

    def _records(self, data: EvalData) -> Sequence[dict]:
        return data.records[: self.max_samples] if self.max_samples else data.records

    def _results(self, answers: List[str], references: List[str]) -> dict:
        return {"metrics": corpus_scores(answers, references, self.metrics), "num_scored": len(answers)}


def reference_prompts(records: Sequence[dict]) -> Tuple[List[List[dict]], List[Optional[List[dict]]], List[str]]:
    """What the model is asked for each record: the messages before its last assistant message, with the
    record's function definitions (``tools``, None when it has none); and that message's text, the reference."""
    last = [max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant") for r in records]
    prompts = [r["messages"][:i] for r, i in zip(records, last)]
    references = [r["messages"][i]["content"] for r, i in zip(records, last)]
    return prompts, [r.get("tools") for r in records], references
