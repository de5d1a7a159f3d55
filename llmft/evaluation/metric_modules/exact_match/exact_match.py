"""Exact match: the share of predictions equal to their reference, whitespace-normalised (0 to 1)."""

import datasets
import evaluate


FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class ExactMatch(evaluate.Metric):
    """Exact match: the share of predictions equal to their reference, whitespace-normalised (0 to 1)."""

    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description="predictions and "
                                   "references: lists of strings", features=FEATURES)

    def _compute(self, predictions, references):
        same = [" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references)]
        return {"exact_match": sum(same) / max(len(same), 1)}
