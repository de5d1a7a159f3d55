"""Reading input files: JSON Lines, streamed JSON arrays, CSV with multi-line fields, text; and each bad file."""

import csv
import io
import json

import pytest

from llmft.data import sources
from llmft.data.sources import read_raw
from llmft.errors import DataError


def values(path):
    return [value for _, _, value, _ in read_raw(path)]


def test_jsonl_skips_blank_lines_and_a_bom_and_numbers_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n{"a": 2}\r\n')
    assert [(line, index, value) for line, index, value, _ in read_raw(path)] == [(1, 0, {"a": 1}), (4, 1, {"a": 2})]


def test_a_broken_jsonl_line_is_a_problem_with_its_column_not_an_exception(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 1,, "b": 2}\n{"caf\xe9": 1}\n{"a": 3}\n')
    rows = list(read_raw(path))
    assert [r[2] for r in rows[::3]] == [{"a": 1}, {"a": 3}]
    line, index, raw, problem = rows[1]
    assert (line, index, raw) == (2, 1, '{"a": 1,, "b": 2}')
    assert problem.reason == "invalid JSON (Expecting property name enclosed in double quotes)"
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    assert problem.column == expected.value.colno
    assert rows[2][3].reason.startswith("not valid UTF-8 (byte 0xe9 at column 6); re-encode the file as UTF-8")


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_streams_in_chunks_with_the_line_of_each_element(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(sources, "CHUNK", chunk)
    records = [{"instruction": f"q{i} é\n" * (i % 3 + 1), "output": "a" * i, "n": 10 ** i} for i in range(12)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
    rows = list(read_raw(path))
    assert [r[2] for r in rows] == records and [r[1] for r in rows] == list(range(12))
    if indent:
        text_lines = path.read_text(encoding="utf-8").splitlines()
        assert [r[0] for r in rows] == [n for n, line in enumerate(text_lines, 1) if line == "  {"]


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_broken_json_in_an_array_stops_the_file_at_its_line_and_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sources, "CHUNK", chunk)
    text = '[\n  {"a": 1},\n  {"a": 2,, "b": 3}\n]'
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(DataError, match=rf"a.json:{expected.value.lineno}:{expected.value.colno}: invalid JSON "
                                        r"\(Expecting property name enclosed in double quotes\); the rest"):
        list(read_raw(path))


@pytest.mark.parametrize("text,message", [
    ('[{"a": 1},]', r":1:11: invalid JSON \(Expecting value\)"),
    ('[{"a": 1}', r":1:10: expected ',' or ']' in the JSON array, found the end of the file"),
    ('[{"a": 1} {"b": 2}]', r":1:11: expected ',' or ']' in the JSON array, found '\{'"),
])
def test_malformed_arrays_are_named(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        list(read_raw(path))


def test_csv_fields_span_lines_and_crlf_inside_them_reads_as_lf(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'\xef\xbb\xbfinstruction,response\n"Steps?","1. a\r\n2. b"\nplain,"say ""hi"""\n\nshort\n')
    rows = list(read_raw(path))
    assert [r[:3] for r in rows[:2]] == [(2, 0, {"instruction": "Steps?", "response": "1. a\n2. b"}),
                                         (4, 1, {"instruction": "plain", "response": 'say "hi"'})]
    assert rows[2][0] == 6 and rows[2][3].reason == "1 fields where the header has 2"


def test_tsv_and_text_paragraphs(tmp_path):
    (tmp_path / "a.tsv").write_text("instruction\tresponse\nq\ta\n")
    assert values(tmp_path / "a.tsv") == [{"instruction": "q", "response": "a"}]
    (tmp_path / "a.txt").write_text("First line\nof one.\n\n\nSecond.\n")
    assert [(r[0], r[2]) for r in read_raw(tmp_path / "a.txt")] == [(1, "First line\nof one."), (5, "Second.")]


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", r"empty.jsonl is empty: it holds no records"),
    ("blank.json", b" \n\n", r"blank.json is empty"),
    ("array.jsonl", b'[\n{"a": 1}\n]\n', r"array.jsonl is a JSON array \(it starts with '\['\), but a .jsonl file "
                                        r"holds one JSON object per line \(JSON Lines\). Rename it to array.json"),
    ("lines.json", b'{"a": 1}\n{"a": 2}\n', r"lines.json holds JSON Lines \(a second JSON value starts on line 2\), "
                                           r"not a JSON array. Rename it to lines.jsonl"),
    ("one.json", b'{"data": [1]}', r"one.json holds a single JSON value with keys data, not an array of records"),
    ("latin1.csv", b"instruction,response\ncaf\xe9,ok\n", r"latin1.csv:2:4: not valid UTF-8 \(byte 0xe9 at column 4\)"),
    ("latin1.json", b'[{"a": "caf\xe9"}]', r"latin1.json:1:12: not valid UTF-8 \(byte 0xe9 at column 12\)"),
    ("header.csv", b"instruction,response\n", r"header.csv holds no records: only a header \(instruction, response\)"),
])
def test_a_bad_file_is_named_with_what_to_do(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(read_raw(path))


def test_the_csv_module_agrees_on_a_messy_file(tmp_path):
    rows = [{"instruction": f"q{i},\"x\"", "response": f"line 1\r\nline {i}\r\n"} for i in range(50)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["instruction", "response"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (tmp_path / "m.csv").write_text(buffer.getvalue(), newline="")
    assert values(tmp_path / "m.csv") == [{k: v.replace("\r\n", "\n") for k, v in r.items()} for r in rows]
