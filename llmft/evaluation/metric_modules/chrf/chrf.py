"""Corpus chrF (character n-gram F-score) with sacrebleu (0 to 100)."""

import datasets
import evaluate
import sacrebleu

FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class Chrf(evaluate.Metric):
    """Corpus chrF (character n-gram F-score) with sacrebleu (0 to 100)."""

    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="Popovic, 2015; Post, 2018", inputs_description="predictions and "
                                   "references: lists of strings", features=FEATURES)

    def _compute(self, predictions, references):
        return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(references)]).score}
