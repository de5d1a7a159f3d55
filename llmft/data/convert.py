"""From input files to conversation records: pick the format, convert, validate, name, de-duplicate and count.

``Collector.read`` reads one file after another (of a run, or of ``llmft-prepare``) and yields the records to
keep: converted, valid, and the first copy of their conversation. Every other record is counted, and a rejected
one is written to ``rejects.jsonl`` with where it was and why (in strict mode, the first one stops everything), so
that, per file and in total, read = written + rejected + duplicates.
"""

import hashlib
import itertools
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import orjson

from llmft.data.formats import detect, format_name, reads_pairs, refuse_conversations, required_keys
from llmft.data.parts import Excluded, Reject
from llmft.data.records import validate_record
from llmft.data.raw import Raw
from llmft.data.sources import SHAPES, read_raw
from llmft.errors import DataError

log = logging.getLogger(__name__)
NUMBERED = re.compile(r"\b(column|turn|message|line|byte) (0x[0-9a-f]+|\d+)")  # grouped as one reason in reports
STRICT_HINT = ("Fix or remove it, or run without strict mode (data.strict=false; llmft-prepare without --strict) "
               "to skip bad records, count them and list them in rejects.jsonl.")


@dataclass
class FileCounts:
    """What happened to the records of one input file."""

    file: str
    format: str
    detected: bool
    read: int = 0
    rejected: int = 0
    duplicates: int = 0
    written: int = 0
    rejected_by_reason: Dict[str, int] = field(default_factory=dict)


def open_file(path: Path, data_format: Callable, source: str,
              pairs: Optional[bool] = False) -> Tuple[Callable, bool, Iterator[Raw]]:
    """Start reading ``path`` and settle its format (``auto`` detects it from the keys of the first record).

    ``pairs``: True when preference pairs are wanted (a preference objective), False when conversations are (a
    preference file is then refused under ``auto``), None for either.

    Returns:
        The converter, whether it was detected, and the raw records, lazily.

    Raises:
        DataError: the file cannot be read, its format cannot be detected, or it lacks a key the format needs.
    """
    raws = read_raw(path)
    head: List[Raw] = []
    for raw in raws:
        head.append(raw)
        if raw.problem is None:  # the first record that parses tells the format
            break
    first = head[-1].value if head and head[-1].problem is None else None
    convert, detected = data_format, format_name(data_format) == "auto"
    if first is not None and detected:
        convert = detect(first, str(path), pairs)
        log.info("%s: detected data_format=%s (keys: %s)", source, format_name(convert),
                 ", ".join(map(str, first)) if isinstance(first, dict) else "plain text")
    elif first is not None:
        _check_keys(path, convert, first)
    if pairs and not reads_pairs(convert):
        raise DataError(refuse_conversations(str(path), format_name(convert)))
    return convert, detected, itertools.chain(head, raws)


def _check_keys(path: Path, convert: Callable, value: Any) -> None:
    if not isinstance(value, dict):
        return
    missing = [(param, key) for param, key in required_keys(convert) if key not in value]
    if missing:
        kind = "column" if SHAPES.get(path.suffix.lower()) in ("csv", "tsv") else "key"
        name, plural = format_name(convert), "s" if len(missing) > 1 else ""
        wanted = " and ".join(f"{key!r} (data_format.{param})" for param, key in missing)
        raise DataError(f"{path}: the first record has no {wanted} {kind}{plural}, which data_format={name} reads. "
                        f"Its {kind}s: {', '.join(map(str, value))}. Name yours on the command line ("
                        f"{' '.join(f'data_format.{param}=<{kind}>' for param, _ in missing)}), or use "
                        "data_format=auto to detect the format.")


def make_record(value: Any, converted: Any, source: str) -> Tuple[bytes, dict, bool]:
    """The schema record of a converted record: its messages (and a converter's ``tools``, and a pair's
    ``rejected`` reply), the input's id (else one derived from the content), and meta.

    Args:
        value: the raw record (its ``id`` and ``meta`` are kept).
        converted: what the converter returned: the messages, or ``{"messages", "tools", "rejected"}``.
        source: the file, for ``meta.source``.

    Returns:
        The digest of the content (messages, tools and rejected reply: what tells records apart), the record
        (``meta.split`` comes last and empty; the split assigns it), and whether the input named it.
    """
    messages, tools, rejected = converted, None, None
    if type(converted) is dict:  # noqa: E721  (a record that defines tools, or a preference pair)
        messages, tools, rejected = converted["messages"], converted.get("tools"), converted.get("rejected")
    key = hashlib.blake2b(orjson.dumps(messages) + (orjson.dumps(tools) if tools else b"") +
                          (orjson.dumps(rejected) if rejected else b""), digest_size=16).digest()
    given, meta = (value.get("id"), value.get("meta")) if type(value) is dict else (None, None)  # noqa: E721
    named = type(given) is int or type(given) is str and given != "" and not given.isspace()  # noqa: E721
    if type(meta) is dict:  # noqa: E721
        meta = {**{k: v for k, v in meta.items() if k != "split"}, "source": meta.get("source") or source,
                "tags": meta.get("tags") or [], "split": ""}
    else:
        meta = {"source": source, "tags": [], "split": ""}
    record = {"id": str(given) if named else key[:8].hex(), "messages": messages}
    if tools:
        record["tools"] = tools
    if rejected:
        record["rejected"] = rejected
    record["meta"] = meta
    return key, record, named


class Collector:
    """Reads input files into the records to keep; counts every record and writes the rejected ones out.

    Args:
        rejects: a binary file for ``rejects.jsonl`` lines, or None.
        strict: raise ``DataError`` at the first rejected record instead.
        pairs: True: read preference pairs (a conversation file is refused); False: conversations (``auto``
            refuses a preference file); None: either, as the first file shows (``llmft-prepare``), the same for all.
    """

    def __init__(self, rejects: Optional[BinaryIO] = None, strict: bool = False, pairs: Optional[bool] = False):
        self.rejects, self.strict, self.pairs = rejects, strict, pairs
        self.kind: Optional[bool] = pairs  # whether the files read so far hold pairs
        self.seen: set = set()  # digests of the conversations kept
        self.ids: set = set()  # ids the inputs gave
        self.files: List[FileCounts] = []
        self.first_reject: Optional[str] = None  # "file:line: reason", for error messages

    def read(self, path: Path, data_format: Callable, source: str) -> Iterator[dict]:
        """The records of ``path`` to keep, lazily; ``source`` names the file.

        Raises:
            DataError: see ``open_file``; and, in strict mode, the first rejected record.
        """
        convert, detected, raws = open_file(path, data_format, source, self.pairs)
        if self.pairs is None:
            self._same_kind(source, reads_pairs(convert))
        counts = FileCounts(source, format_name(convert), detected)
        self.files.append(counts)
        check = not getattr(getattr(convert, "func", convert), "valid_by_construction", False)
        seen, ids, digest, dumps = self.seen, self.ids, hashlib.blake2b, orjson.dumps  # bound once: a hot loop
        for line, index, value, problem in raws:
            counts.read += 1
            if problem is not None:
                self._reject(counts, line, index, value, problem.reason, problem.column)
                continue
            try:
                messages = convert(value)
            except Reject as exc:
                self._reject(counts, line, index, value, str(exc), excluded=isinstance(exc, Excluded))
                continue
            if type(messages) is list and type(value) is dict and "id" not in value and "meta" not in value:  # noqa
                key = digest(dumps(messages), digest_size=16).digest()  # the usual case inline: as make_record
                record, named = {"id": key[:8].hex(), "messages": messages, "meta": {
                    "source": source, "tags": [], "split": ""}}, False
            else:
                key, record, named = make_record(value, messages, source)
            if key in seen:
                counts.duplicates += 1
                continue
            if check or named:
                reason = validate_record(record) if check else None
                if reason is not None:
                    reason = f"the record breaks the conversation schema: {reason}"
                elif named and record["id"] in ids:
                    reason = f"duplicate id {record['id']!r} (a different conversation has it)"
                if reason is not None:
                    self._reject(counts, line, index, value, reason)
                    continue
                if named:
                    ids.add(record["id"])
            seen.add(key)
            counts.written += 1
            yield record

    def _same_kind(self, source: str, pairs: bool) -> None:
        """Under ``pairs=None``, every file must hold what the first one holds: pairs or conversations."""
        if self.files and self.kind != pairs:
            kinds = ("preference pairs", "conversations") if pairs else ("conversations", "preference pairs")
            raise DataError(f"{source} holds {kinds[0]}, and {self.files[0].file} before it holds {kinds[1]}: one "
                            "output cannot mix them. Prepare them separately, or read the pairs as conversations "
                            "with data_format=chosen (the prompt and the chosen reply of each pair).")
        self.kind = pairs

    def _reject(self, counts: FileCounts, line: int, index: int, value: Any, reason: str,
                column: Optional[int] = None, excluded: bool = False) -> None:
        where = f"{counts.file}:{line}" + (f":{column}" if column else "")
        if counts.file.lower().endswith(".json"):  # in a JSON array, the record's position says more
            where += f" (record {index})"
        if self.strict and not excluded:
            raise DataError(f"{where}: {reason}. {STRICT_HINT}")
        self.first_reject = self.first_reject or f"{where}: {reason}"
        counts.rejected += 1
        group = NUMBERED.sub(r"\1 N", reason)
        counts.rejected_by_reason[group] = counts.rejected_by_reason.get(group, 0) + 1
        if self.rejects is not None:
            entry = {"file": counts.file, "line": line, "index": index, "reason": reason}
            self.rejects.write(orjson.dumps({**entry, **({"column": column} if column else {}), "record": value},
                                            default=str) + b"\n")

    def totals(self) -> Dict[str, int]:
        """Read, converted, rejected, duplicates and written, over all files."""
        total = {k: sum(getattr(f, k) for f in self.files) for k in ("read", "rejected", "duplicates", "written")}
        return {"read": total["read"], "converted": total["read"] - total["rejected"], **total}

    def report(self) -> Dict[str, Any]:
        """The counts per file and in total, and the rejections grouped by reason (numbers shown as N)."""
        reasons: Counter = Counter()
        for f in self.files:
            reasons.update(f.rejected_by_reason)
        order = ("file", "format", "detected", "read", "converted", "rejected", "duplicates", "written",
                 "rejected_by_reason")
        files = [{**asdict(f), "converted": f.read - f.rejected} for f in self.files]
        return {"files": [{k: f[k] for k in order} for f in files], "total": self.totals(),
                "rejected_by_reason": dict(reasons.most_common())}

    def rejections(self) -> str:
        """A sentence on the rejected records, for the message of an error they may explain ('' if none)."""
        total = self.totals()
        if not total["rejected"]:
            return ""
        verb = "was" if total["rejected"] == 1 else "were"
        return (f" {total['rejected']} of the {total['read']} records read {verb} rejected, the first at "
                f"{self.first_reject} (each one is listed in rejects.jsonl).")
