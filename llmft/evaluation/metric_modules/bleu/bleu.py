"""Corpus BLEU with sacrebleu's default tokenizer (0 to 100)."""

import sacrebleu

from llmft.evaluation.metric_base import pair_metric


def bleu(predictions, references):
    return sacrebleu.corpus_bleu(predictions, [references]).score


Bleu = pair_metric("bleu", __doc__, "Papineni et al., 2002; Post, 2018", bleu)
