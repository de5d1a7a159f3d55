"""Corpus BLEU with sacrebleu's default tokenizer (0 to 100)."""

import datasets
import evaluate
import sacrebleu

FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class Bleu(evaluate.Metric):
    """Corpus BLEU with sacrebleu's default tokenizer (0 to 100)."""

    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="Papineni et al., 2002; Post, 2018", inputs_description="predictions and "
                                   "references: lists of strings", features=FEATURES)

    def _compute(self, predictions, references):
        return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score}
