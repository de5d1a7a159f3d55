"""``llmft.data.prepare``: mixed formats in, exact splits out, and a report whose numbers always reconcile."""

import csv
import json

import pytest

from llmft.data.formats import alpaca, sharegpt
from llmft.data.prepare import format_report, prepare, split_sizes
from llmft.data.synth import write
from llmft.errors import DataError


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def inputs(tmp_path):
    """A folder of five files in four formats, with known bad records and duplicates (see the comments)."""
    folder = tmp_path / "in"
    folder.mkdir()
    with open(folder / "alpaca.json", "w") as out:  # 40 good records, a JSON array
        write(out, "alpaca", 40, seed=1, array=True)
    with open(folder / "sharegpt.jsonl", "w") as out:  # 30 good + 2 bad (unknown speaker; ends with the user)
        write(out, "sharegpt", 30, seed=2)
        out.write(json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]})
                  + "\n")
        out.write(json.dumps({"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Yo"}]})
                  + "\n")
    first = json.loads((folder / "alpaca.json").read_text())[0]
    lines = [json.dumps({"instruction": "Name a prime.", "output": "7"}), '{"instruction": "x",, "output": "y"}',
             json.dumps({"instruction": "Empty?", "output": "  "}), json.dumps(first),  # a duplicate of alpaca.json
             json.dumps({"instruction": "Name a prime.", "output": "7"})]  # a duplicate within the file
    (folder / "extra.jsonl").write_text("\n".join(lines) + "\n")
    with open(folder / "faq.csv", "w", newline="") as out:  # 3 good rows, one spanning lines; 1 empty response
        rows = csv.writer(out, lineterminator="\n")
        rows.writerows([["instruction", "response"], ["Steps?", "1. a\r\n2. b"], ["Q2", "A2"], ["Q3", ""],
                        ["Q4", "A4"]])
    (folder / "notes.txt").write_text("Paragraph one.\n\nParagraph two\non two lines.\n")  # 2 texts
    return folder


EXPECTED = {  # file: (read, rejected, duplicates, written)
    "in/alpaca.json": (40, 0, 0, 40), "in/extra.jsonl": (5, 2, 2, 1), "in/faq.csv": (4, 1, 0, 3),
    "in/notes.txt": (2, 0, 0, 2), "in/sharegpt.jsonl": (32, 2, 0, 30),
}


def test_every_record_is_accounted_for(inputs, tmp_path):
    report = prepare([str(inputs)], str(tmp_path / "out"))
    got = {f["file"]: (f["read"], f["rejected"], f["duplicates"], f["written"]) for f in report["files"]}
    assert got == EXPECTED
    assert {f["file"]: f["format"] for f in report["files"]} == {
        "in/alpaca.json": "alpaca", "in/extra.jsonl": "alpaca", "in/faq.csv": "csv", "in/notes.txt": "text",
        "in/sharegpt.jsonl": "sharegpt"}
    for f in report["files"] + [report["total"]]:
        assert f["read"] == f["written"] + f["rejected"] + f["duplicates"]
        assert f["converted"] == f["read"] - f["rejected"]
    assert report["total"]["written"] == 76 == sum(report["splits"].values())
    assert report["splits"] == {"train": 60, "val": 8, "test": 8}
    assert report["rejected_by_reason"] == {
        "invalid JSON (Expecting property name enclosed in double quotes)": 1, "'output' is empty": 1,
        "'response' is empty": 1, "turn N: speaker 'bot' is not one of system, human, user, gpt, assistant, "
        "function_call, observation, tool (map it with "
        "data_format.roles.<name>=user|assistant|system|tool|function_call)": 1,
        "the record breaks the conversation schema: the last message must be from the assistant": 1}
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text()) == report


def test_rejects_say_where_and_why_and_keep_the_record(inputs, tmp_path):
    prepare([str(inputs)], str(tmp_path / "out"))
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["file"], r["line"], r["index"]) for r in rejects] == [
        ("in/extra.jsonl", 2, 1), ("in/extra.jsonl", 3, 2), ("in/faq.csv", 5, 2), ("in/sharegpt.jsonl", 31, 30),
        ("in/sharegpt.jsonl", 32, 31)]
    assert rejects[0]["column"] == 21 and rejects[0]["record"] == '{"instruction": "x",, "output": "y"}'
    assert rejects[1]["record"] == {"instruction": "Empty?", "output": "  "}
    assert rejects[2]["record"] == {"instruction": "Q3", "response": ""}


def test_splits_hold_every_kept_record_once_with_its_split_and_unique_ids(inputs, tmp_path):
    report = prepare([str(inputs)], str(tmp_path / "out"))
    splits = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in splits.items()} == report["splits"]
    everything = [r for records in splits.values() for r in records]
    assert len({r["id"] for r in everything}) == len(everything)
    assert len({json.dumps(r["messages"]) for r in everything}) == len(everything)
    assert all(r["meta"]["split"] == s for s, records in splits.items() for r in records)
    csv_steps = next(r for r in everything if r["messages"][0]["content"] == "Steps?")
    assert csv_steps["messages"][1]["content"] == "1. a\n2. b" and csv_steps["meta"]["source"] == "in/faq.csv"
    texts = [r for r in everything if r["meta"]["source"] == "in/notes.txt"]
    assert sorted(r["messages"][0]["content"] for r in texts) == ["Paragraph one.", "Paragraph two\non two lines."]


def test_same_inputs_and_seed_give_the_same_bytes_another_seed_another_split(inputs, tmp_path):
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for out, seed in zip(runs, (7, 7, 8)):
        prepare([str(inputs)], str(out), seed=seed)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()
    val = lambda out: {r["id"] for r in read_jsonl(out / "val.jsonl")}  # noqa: E731
    assert val(runs[0]) != val(runs[2])
    everything = lambda out: sorted(r["id"] for s in ("train", "val", "test")  # noqa: E731
                                    for r in read_jsonl(out / f"{s}.jsonl"))
    assert everything(runs[0]) == everything(runs[2])


def test_ids_are_derived_from_the_content_when_the_input_has_none(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "Q", "output": "A"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"instruction": "Other", "output": "B"}) + "\n" +
                                      json.dumps({"instruction": "Q", "output": "A"}) + "\n")
    first = prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "o1"), ratios=(1, 0, 0))
    second = prepare([str(tmp_path / "b.jsonl")], str(tmp_path / "o2"), ratios=(1, 0, 0))
    assert first["splits"] == {"train": 1, "val": 0, "test": 0} and not (tmp_path / "o1" / "test.jsonl").exists()
    id_of = lambda out: {r["messages"][0]["content"]: r["id"] for r in read_jsonl(out / "train.jsonl")}  # noqa: E731
    assert id_of(tmp_path / "o1")["Q"] == id_of(tmp_path / "o2")["Q"] != id_of(tmp_path / "o2")["Other"]


def test_an_id_given_twice_for_different_conversations_is_rejected(tmp_path):
    rows = [{"id": "a", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "ok"}]}
            for q in ("one", "two")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare([str(tmp_path / "s.jsonl")], str(tmp_path / "out"), sharegpt, ratios=(1, 0, 0))
    assert report["rejected_by_reason"] == {"duplicate id 'a' (a different conversation has it)": 1}


def test_strict_stops_at_the_first_bad_record_with_file_line_and_column(inputs, tmp_path):
    with pytest.raises(DataError, match=r"in/extra.jsonl:2:21: invalid JSON \(Expecting property name enclosed in "
                                        r"double quotes\). Fix or remove it, or run without strict mode"):
        prepare([str(inputs)], str(tmp_path / "out"), strict=True)
    assert not (tmp_path / "out" / "train.jsonl").exists() and not (tmp_path / "out" / ".spool.jsonl").exists()


def test_an_explicit_format_checks_its_keys_on_the_first_record(inputs, tmp_path):
    with pytest.raises(DataError, match=r"sharegpt.jsonl: the first record has no 'instruction' "
                                        r"\(data_format.instruction\) and 'output' \(data_format.output\) keys, which "
                                        r"data_format=alpaca reads. Its keys: id, conversations"):
        prepare([str(inputs / "sharegpt.jsonl")], str(tmp_path / "out"), alpaca)


def test_outputs_inside_an_input_folder_are_not_read_back(inputs):
    first = prepare([str(inputs)], str(inputs / "prepared"))
    again = prepare([str(inputs)], str(inputs / "prepared"))
    assert again["total"] == first["total"]


@pytest.mark.parametrize("n,ratios,sizes", [
    (100, (0.8, 0.1, 0.1), [80, 10, 10]), (7, (0.8, 0.1, 0.1), [5, 1, 1]), (2, (0.8, 0.1, 0.1), [1, 1, 0]),
    (1, (0.8, 0.1, 0.1), [1, 0, 0]), (10, (1, 0, 0), [10, 0, 0]), (1001, (0.9, 0.05, 0.05), [901, 50, 50]),
])
def test_split_sizes_are_exact(n, ratios, sizes):
    assert split_sizes(n, ratios) == sizes


@pytest.mark.parametrize("ratios", [(0.8, 0.1), (0.5, 0.1, 0.1), (0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_ratios_are_refused(tmp_path, ratios):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "t"}) + "\n")
    with pytest.raises(DataError, match="are not three shares of train, val and test that sum to 1"):
        prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "out"), ratios=ratios)


def test_the_printed_report_shows_each_file_the_total_the_reasons_and_the_splits(inputs, tmp_path):
    text = format_report(prepare([str(inputs)], str(tmp_path / "out")))
    lines = text.splitlines()
    assert lines[0].split() == ["file", "format", "read", "converted", "rejected", "duplicates", "written"]
    assert lines[2].split() == ["in/extra.jsonl", "alpaca", "(detected)", "5", "3", "2", "2", "1"]
    assert lines[6].split() == ["total", "83", "78", "5", "2", "76"]
    assert "splits (seed 42, ratios 0.8/0.1/0.1): train 60, val 8, test 8" in text
    assert "rejects.jsonl (5 records)" in text


def test_when_nothing_is_usable_the_report_is_still_written_and_the_error_says_why(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "q", "output": ""}\n{"instruction": " ", "output": "a"}\n')
    with pytest.raises(DataError, match=r"no usable record is left to split. 2 of the 2 records read were rejected, "
                                        r"the first at .*bad.jsonl:1: 'output' is empty \(each one is listed in "
                                        r"rejects.jsonl\)"):
        prepare([str(tmp_path / "bad.jsonl")], str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["total"]["rejected"] == 2 and report["splits"] == {"train": 0, "val": 0, "test": 0}
    assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 2
