"""Corpus chrF (character n-gram F-score) with sacrebleu (0 to 100)."""

import sacrebleu

from llmft.evaluation.metric_base import pair_metric


def chrf(predictions, references):
    return sacrebleu.corpus_chrf(predictions, [references]).score


Chrf = pair_metric("chrf", __doc__, "Popovic, 2015; Post, 2018", chrf)
