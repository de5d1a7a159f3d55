"""What every evaluator is given: the evaluation split, as records and as tokenized examples."""

from dataclasses import dataclass
from typing import Any, List


@dataclass
class EvalData:
    """The evaluation split.

    Attributes:
        records: conversation records (``{"id", "messages", ...}``); the last assistant message is the reference.
        tokenized: the same records tokenized for training (``input_ids``, ``labels``), for loss-based metrics.
    """

    records: List[dict]
    tokenized: Any
