"""What a format reader yields before conversion and the schema check: one ``Raw`` per record of a file.

Every reader (``llmft.data.sources`` for text files, ``llmft.data.datasets_io`` for parquet, hub and saved
datasets) yields ``Raw`` records in file order; ``llmft.data.convert`` converts and validates them. A record that
cannot even be parsed (a broken JSONL line, a line that is not UTF-8) carries a ``Problem`` instead of a value.
"""

from functools import partial
from typing import Any, NamedTuple, Optional


class Problem(NamedTuple):
    """Why a record could not be parsed, and the column where it went wrong (1-based, if known)."""

    reason: str
    column: Optional[int] = None


class Raw(NamedTuple):
    """One record as read.

    Attributes:
        line: where it starts: the 1-based line of a text file, the 1-based row of a table.
        index: its 0-based position among the file's records.
        value: the parsed value (a JSON value, a CSV row as a dict, a paragraph of text); for a record with a
            ``problem``, its text as found.
        problem: why it could not be parsed, or None.
    """

    line: int
    index: int
    value: Any
    problem: Optional[Problem] = None


# Raw from a 4-tuple without the Python-level __new__ of a NamedTuple: the readers make millions of them.
make_raw = partial(tuple.__new__, Raw)
