"""ROUGE-L F-measure (longest common subsequence), mean over pairs, with rouge_score (0 to 1)."""

from rouge_score import rouge_scorer

from llmft.evaluation.metric_base import pair_metric


def rouge_l(predictions, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / max(len(scores), 1)


RougeL = pair_metric("rouge_l", __doc__, "Lin, 2004", rouge_l)
