"""Scores of generated answers against references, computed with ``evaluate`` from modules shipped here."""

import functools
from pathlib import Path
from typing import Dict, List, Sequence

from llmft.errors import ConfigError

MODULES = Path(__file__).resolve().parent / "metric_modules"
METRICS = ("exact_match", "rouge_l", "bleu", "chrf")
PER_ANSWER = ("exact_match", "rouge_l", "chrf")  # sentence-level BLEU is too noisy to show per answer


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """``evaluate.load`` of a metric module bundled in ``metric_modules/`` (no hub access)."""
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}.")
    import evaluate  # imported on first use: it takes seconds

    return evaluate.load(str(MODULES / name))


def corpus_scores(predictions: Sequence[str], references: Sequence[str],
                  names: Sequence[str] = METRICS) -> Dict[str, float]:
    """Each metric over all ``(prediction, reference)`` pairs."""
    return {n: load_metric(n).compute(predictions=list(predictions), references=list(references))[n] for n in names}


def score_pairs(predictions: Sequence[str], references: Sequence[str],
                names: Sequence[str] = PER_ANSWER) -> List[Dict[str, float]]:
    """The metrics of each pair on its own (for the per-prompt table)."""
    return [corpus_scores([p], [r], names) for p, r in zip(predictions, references)]
