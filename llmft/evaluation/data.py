"""What every evaluator is given: the evaluation split, as records and as tokenized examples."""

from dataclasses import dataclass
from typing import Any, List, Optional


@dataclass
class EvalData:
    """The evaluation split.

    Attributes:
        records: conversation records (``{"id", "messages", ...}``); the last assistant message is the reference.
        tokenized: the same records tokenized for training (``input_ids``, ``labels``), for loss-based metrics
            (preference pairs: their prompt and chosen reply).
        pairs: when the records are preference pairs, both sides of each (``llmft.data.pairs.tokenize_pairs``);
            else None.
    """

    records: List[dict]
    tokenized: Any
    pairs: Optional[Any] = None
