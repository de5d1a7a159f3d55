"""Readers of input files, one per ``data_format`` option; each yields records of the conversation schema."""

import json
from pathlib import Path
from typing import Iterator

from llmft.data.records import validate_record
from llmft.errors import DataError


def read_messages(path: str) -> Iterator[dict]:
    """Read a JSONL file whose lines are already conversation records (the ``messages`` format).

    Args:
        path: a ``.jsonl`` file, one ``{"id", "messages", "meta"}`` object per line.

    Yields:
        Each record, in file order.

    Raises:
        DataError: a line is not JSON or breaks the schema; the message names the file and line.
    """
    file = Path(path)
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{number}:{exc.colno}: invalid JSON ({exc.msg}). Fix or remove the line.") \
                    from None
            reason = validate_record(record)
            if reason:
                raise DataError(f"{file}:{number}: the record breaks the conversation schema: {reason}.")
            yield record
