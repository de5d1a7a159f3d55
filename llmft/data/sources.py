"""Input files as a lazy stream of raw records: JSON Lines, JSON arrays, CSV/TSV, plain text, and (through
``llmft.data.datasets_io``) parquet, hub datasets and ``save_to_disk`` folders.

Each file yields ``Raw`` records (``llmft.data.raw``): where the record starts, the parsed value, and, for a record
that cannot even be parsed (a broken JSONL line, a line that is not UTF-8), the problem instead. Problems that make
the rest of a file unreadable (an empty file, a JSON array where JSON Lines is expected, broken JSON inside an
array, a CSV in another encoding) raise ``DataError``.
"""

import codecs
import csv
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from llmft.data.datasets_io import hub_id, is_saved_dataset, read_hub, read_parquet, read_saved
from llmft.data.raw import Problem, Raw, make_raw
from llmft.errors import DataError

SHAPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "text",
          ".parquet": "parquet"}
BOM = "\ufeff"
CHUNK = 1 << 20
WHITESPACE = re.compile(r"[ \t\n\r]*")
csv.field_size_limit(1 << 30)  # long replies: the default limit is 128 KiB a field


def read_raw(path: Path) -> Iterator[Raw]:
    """The records of ``path``, lazily, in file order; the shape comes from the suffix (else from the content).

    Raises:
        DataError: the file is empty, or its content contradicts its suffix, or it cannot be read past a point.
    """
    if hub_id(path):
        return read_hub(path)
    if is_saved_dataset(path):
        return read_saved(path)
    head = _head(path)
    shape = SHAPES.get(path.suffix.lower()) or ("json" if head.startswith("[") else "jsonl")
    if shape == "parquet":
        return read_parquet(path)
    if shape == "jsonl":
        return read_jsonl(path)
    if shape == "json" and not head.startswith("["):
        raise DataError(_not_an_array(path))
    return {"json": _json_array, "csv": _csv, "tsv": _csv, "text": _paragraphs}[shape](path)


def read_jsonl(path: Path) -> Iterator[Raw]:
    """The records of a JSON Lines file, lazily.

    Raises:
        DataError: the file is empty, or is a JSON array.
    """
    if _head(path).startswith("["):
        raise DataError(f"{path} is a JSON array (it starts with '['), but a {path.suffix or 'JSONL'} file holds one "
                        f"JSON object per line (JSON Lines). Rename it to {path.with_suffix('.json').name}: llmft "
                        "reads .json files as arrays.")
    return _jsonl(path)


def _head(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8", "replace").lstrip(BOM + " \t\r\n")
    if not head:
        raise DataError(f"{path} is empty: it holds no records. Fill it, or leave it out of data.path / the inputs.")
    return head


def _not_an_array(path: Path) -> str:
    value, end, text, size = None, 0, "", CHUNK
    with path.open("rb") as f:
        while value is None:  # read until the first value is whole (a JSONL line), not the whole file
            data = f.read(size)
            text, size = text + data.decode("utf-8", "replace"), size * 2
            try:
                value, end = json.JSONDecoder().raw_decode(text.lstrip(BOM + " \t\r\n"))
                text = text.lstrip(BOM + " \t\r\n")
            except json.JSONDecodeError:
                if not data:
                    break
    if value is not None and text[end:].strip():
        line = text.count("\n", 0, end + len(text[end:]) - len(text[end:].lstrip())) + 1
        return (f"{path} holds JSON Lines (a second JSON value starts on line {line}), not a JSON array. Rename it "
                f"to {path.with_suffix('.jsonl').name}: llmft reads .jsonl files line by line.")
    keys = f" with keys {', '.join(map(str, value))}" if isinstance(value, dict) else ""
    return (f"{path} holds a single JSON value{keys}, not an array of records. Write the records as a JSON array "
            f"([{{...}}, {{...}}]) or as JSON Lines in a .jsonl file.")


def _utf8_problem(data: bytes, exc: UnicodeDecodeError) -> Problem:
    column = len(data[:exc.start].decode("utf-8", "replace")) + 1
    return Problem(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); re-encode the file as "
                   "UTF-8, e.g. iconv -f cp1252 -t utf-8 IN > OUT", column)


def _jsonl(path: Path) -> Iterator[Raw]:
    index, loads = 0, orjson.loads
    with path.open("rb") as lines:
        if lines.peek(3)[:3] == codecs.BOM_UTF8:
            lines.read(3)
        for number, line in enumerate(lines, start=1):
            if line.isspace():
                continue
            try:
                yield make_raw((number, index, loads(line), None))
            except orjson.JSONDecodeError:
                yield Raw(number, index, line.decode("utf-8", "replace").rstrip("\r\n"), _json_problem(line))
            index += 1


def _json_problem(line: bytes) -> Problem:
    line = line.rstrip(b"\r\n")  # a line that ends too early is wrong at its end, not on the next line
    try:
        json.loads(line.decode("utf-8"))  # the standard library says what is wrong in words
    except UnicodeDecodeError as exc:
        return _utf8_problem(line, exc)
    except json.JSONDecodeError as exc:
        return Problem(f"invalid JSON ({exc.msg})", exc.colno)
    return Problem("invalid JSON (not accepted by a strict parser: NaN, Infinity or a lone surrogate?)")


def _decoded_lines(path: Path, lines: Iterable[bytes]) -> Iterator[str]:
    """Lines as text, line endings kept (CSV needs them); a line that is not UTF-8 stops the file with its number."""
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = _utf8_problem(line, exc)
            raise DataError(f"{path}:{number}:{problem.column}: {problem.reason}.") from None
        yield text.lstrip(BOM) if number == 1 else text


def _csv(path: Path) -> Iterator[Raw]:
    with path.open("rb") as f:
        rows = csv.reader(_decoded_lines(path, f), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = next(rows, None)
        if not header or not any(c.strip() for c in header):
            raise DataError(f"{path} has no header row: the first line must name the columns.")
        header = [c.strip() for c in header]
        index, line = 0, rows.line_num + 1
        for row in rows:
            if any(cell.strip() for cell in row):
                if len(row) == len(header):
                    yield Raw(line, index, {k: v.replace("\r\n", "\n") for k, v in zip(header, row)})
                else:
                    yield Raw(line, index, row, Problem(f"{len(row)} fields where the header has {len(header)}"))
                index += 1
            line = rows.line_num + 1
    if index == 0:
        raise DataError(f"{path} holds no records: only a header ({', '.join(header)}).")


def _paragraphs(path: Path) -> Iterator[Raw]:
    """Paragraphs separated by blank lines, each one record."""
    with path.open("rb") as f:
        block, start, index = [], 0, 0
        for number, line in enumerate(_decoded_lines(path, f), start=1):
            if line.strip():
                block, start = block + [line.rstrip("\r\n")], start or number
            elif block:
                yield Raw(start, index, "\n".join(block))
                block, start, index = [], 0, index + 1
        if block:
            yield Raw(start, index, "\n".join(block))


def _json_array(path: Path) -> Iterator[Raw]:
    """The elements of a JSON array, decoded a chunk at a time so that a large file never sits in memory whole."""
    with path.open("rb") as f:
        yield from _ArrayScanner(path, _text_chunks(path, f)).elements()


def _text_chunks(path: Path, f) -> Iterator[str]:
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    while True:
        data = f.read(CHUNK)
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            start = exc.object.rfind(b"\n", 0, exc.start) + 1  # the column counts from this chunk's part of the line
            problem = _utf8_problem(exc.object[start:], UnicodeDecodeError(
                exc.encoding, exc.object[start:], exc.start - start, exc.end - start, exc.reason))
            line += exc.object.count(b"\n", 0, exc.start)
            raise DataError(f"{path}:{line}:{problem.column}: {problem.reason}.") from None
        line += data.count(b"\n")
        if not data:
            return
        yield text


class _ArrayScanner:
    """Walks a JSON array in a sliding text buffer, tracking the line and column of each element."""

    def __init__(self, path: Path, chunks: Iterator[str]):
        self.path, self.chunks = path, chunks
        self.buf, self.pos, self.line, self.line_start = next(chunks, "").lstrip(BOM), 0, 1, 0

    def elements(self) -> Iterator[Raw]:
        decoder, index = json.JSONDecoder(), 0
        self._expect("[")
        if self._peek() == "]":
            return
        while True:
            self._peek()
            start = self.line
            value, end = self._decode(decoder)
            yield Raw(start, index, value)
            index += 1
            self._advance(end)
            if self._expect(",]") == "]":
                return

    def _decode(self, decoder: json.JSONDecoder):
        while True:
            self._peek()
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or not self._refill():  # a number cut at the buffer's end reads short
                    return value, end
            except json.JSONDecodeError as exc:
                near_end = exc.pos >= len(self.buf) - 32 or exc.msg.startswith("Unterminated string")
                if not (near_end and self._refill()):
                    self._fail(exc.pos, f"invalid JSON ({exc.msg})")

    def _peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file), the position moved to it."""
        while True:
            self._advance(WHITESPACE.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or not self._refill():
                return self.buf[self.pos:self.pos + 1]

    def _expect(self, chars: str) -> str:
        found = self._peek()
        if not found or found not in chars:
            what = repr(found) if found else "the end of the file"
            self._fail(self.pos, f"expected {' or '.join(map(repr, chars))} in the JSON array, found {what}")
        self._advance(self.pos + 1)
        return found

    def _advance(self, to: int) -> None:
        newlines = self.buf.count("\n", self.pos, to)
        if newlines:
            self.line, self.line_start = self.line + newlines, self.buf.rfind("\n", self.pos, to) + 1
        self.pos = to

    def _refill(self) -> bool:
        more = next(self.chunks, None)
        if more is None:
            return False
        self.buf, self.line_start, self.pos = self.buf[self.pos:] + more, self.line_start - self.pos, 0
        return True

    def _fail(self, at: int, reason: str):
        newline = self.buf.rfind("\n", self.pos, at)
        line, column = self.line + self.buf.count("\n", self.pos, at), at - (newline if newline >= 0 else
                                                                              self.line_start - 1)
        raise DataError(f"{self.path}:{line}:{column}: {reason}; the rest of the array cannot be read. Fix the "
                        f"file (python -m json.tool {self.path.name} points at the spot).")
