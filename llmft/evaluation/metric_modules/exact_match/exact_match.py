"""Exact match: the share of predictions equal to their reference, whitespace-normalised (0 to 1)."""

from llmft.evaluation.metric_base import pair_metric


def exact_match(predictions, references):
    same = [" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references)]
    return sum(same) / max(len(same), 1)


ExactMatch = pair_metric("exact_match", __doc__, "", exact_match)
