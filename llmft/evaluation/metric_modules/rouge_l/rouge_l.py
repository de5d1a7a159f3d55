"""ROUGE-L F-measure (longest common subsequence), mean over pairs, with rouge_score (0 to 1)."""

import datasets
import evaluate
from rouge_score import rouge_scorer

FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class RougeL(evaluate.Metric):
    """ROUGE-L F-measure (longest common subsequence), mean over pairs, with rouge_score (0 to 1)."""

    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="Lin, 2004", inputs_description="predictions and "
                                   "references: lists of strings", features=FEATURES)

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        return {"rouge_l": sum(scores) / max(len(scores), 1)}
