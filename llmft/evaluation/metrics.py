"""Reference metrics over the evaluation split: the model answers each record's prompt, scored against its reply."""

from typing import Optional, Sequence

from llmft.evaluation.data import EvalData
from llmft.evaluation.generation import generate
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
        records = data.records[: self.max_samples] if self.max_samples else data.records
        last = [max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant") for r in records]
        prompts = [r["messages"][:i] for r, i in zip(records, last)]
        references = [r["messages"][i]["content"] for r, i in zip(records, last)]
        answers = generate(model, tokenizer, prompts, self.max_new_tokens, self.batch_size)
        return {"metrics": corpus_scores(answers, references, self.metrics), "num_scored": len(records)}
