"""What the metric modules in ``metric_modules/`` share: an ``evaluate.Metric`` over string pairs."""

from typing import Callable, List

import datasets
import evaluate

FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


def pair_metric(name: str, description: str, citation: str,
                score: Callable[[List[str], List[str]], float]) -> type:
    """An ``evaluate.Metric`` class whose ``compute(predictions=..., references=...)`` returns ``{name: score}``.

    Each module assigns the result to a module-level name, which ``evaluate.load`` finds as the module's metric.
    """

    class PairMetric(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(description=description, citation=citation, features=FEATURES,
                                       inputs_description="predictions and references: lists of strings")

        def _compute(self, predictions, references):
            return {name: score(list(predictions), list(references))}

    PairMetric.__name__ = PairMetric.__qualname__ = name
    return PairMetric
