"""``llmft-prepare``, ``llmft-check`` and ``llmft-synth`` as a user runs them; every bad input gets one clear line.

Each command runs in a subprocess, and the tests check the message, the exit code, and that no Python traceback
reaches the user.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import realdata


def cli(name, *args, cwd=None, timeout=180):
    """Run a console script (or its module when it is not installed) and return the completed process."""
    module = {"llmft-prepare": "llmft.data.prepare", "llmft-check": "llmft.data.check",
              "llmft-synth": "llmft.data.synth", "llmft-train": "llmft.train"}[name]
    command = [shutil.which(name)] if shutil.which(name) else [sys.executable, "-c",
                                                                 f"from {module} import main; main()"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_clean_error(result, prog, pattern, code=1):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert errors, result.stderr[-2000:]
    assert re.search(pattern, errors[-1]), errors[-1]


BAD_INPUTS = [  # (file name, bytes, extra arguments, expected message)
    ("broken.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "c",, "output": "d"}\n', ["--strict"],
     r"broken.jsonl:2:21: invalid JSON \(Expecting property name enclosed in double quotes\)\. Fix or remove it"),
    ("broken.json", b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]', [],
     r"broken.json:3:22: invalid JSON \(Expecting ',' delimiter\); the rest of the array cannot be read"),
    ("faq.json", b'[{"question": "q", "answer": "a"}]', [],
     r"faq.json: cannot tell the data format from the keys of its first record \(keys: question, answer\)\. "
     r"data_format=auto knows: messages \(messages\); sharegpt \(conversations\); alpaca \(instruction, output\); "
     r"csv \(instruction, response\); text \(text\)"),
    ("faq.csv", b"question,answer\nq,a\n", ["data_format=csv", "data_format.instruction=question"],
     r"faq.csv: the first record has no 'response' \(data_format.response\) column, which data_format=csv reads\. "
     r"Its columns: question, answer\. Name yours on the command line \(data_format.response=<column>\)"),
    ("empty.jsonl", b"", [], r"empty.jsonl is empty: it holds no records"),
    ("latin1.csv", b"instruction,response\ncaf\xe9,ok\n", [],
     r"latin1.csv:2:4: not valid UTF-8 \(byte 0xe9 at column 4\); re-encode the file as UTF-8, e.g. iconv"),
    ("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "ok"}\n', ["--strict"],
     r"latin1.jsonl:1:21: not valid UTF-8 \(byte 0xe9 at column 21\)"),
    ("array.jsonl", b'[{"instruction": "a", "output": "b"}]\n', [],
     r"array.jsonl is a JSON array \(it starts with '\['\), but a .jsonl file holds one JSON object per line"),
    ("lines.json", b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n', [],
     r"lines.json holds JSON Lines \(a second JSON value starts on line 2\), not a JSON array\. Rename it to "
     r"lines.jsonl"),
]


@pytest.mark.parametrize("name,content,args,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_prepare_names_each_bad_input_without_a_traceback(tmp_path, name, content, args, message):
    (tmp_path / name).write_bytes(content)
    assert_clean_error(cli("llmft-prepare", name, "--out", "out", *args, cwd=tmp_path), "llmft-prepare", message)


@pytest.mark.parametrize("args,message,code", [
    (["missing.jsonl"], r"missing.jsonl does not exist", 1),
    (["a.jsonl", "--ratios", "0.5", "0.1", "0.1"], r"are not three shares of train, val and test that sum to 1", 1),
    (["a.jsonl", "data_format=alpacca"], r"data_format=alpacca is not an option of the data_format group \(did you "
                                         r"mean data_format=alpaca\?\)", 2),
    (["a.jsonl", "data_format.outptu=x"], r"data_format.outptu is not a key of data_format", 2),
    (["a.jsonl", "+data_format.outptu=x"], r"data_format.outptu is not an argument of llmft.data.formats.auto", 2),
])
def test_prepare_names_a_bad_command_line(tmp_path, args, message, code):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    assert_clean_error(cli("llmft-prepare", *args, "--out", "out", cwd=tmp_path), "llmft-prepare", message, code)


def test_prepare_skips_bad_records_prints_the_report_and_writes_the_files(tmp_path):
    good, other = b'{"instruction": "a", "output": "b"}\n', b'{"instruction": "c", "output": "d"}\n'
    (tmp_path / "mixed.jsonl").write_bytes(good + b'{"instruction": "caf\xe9"}\n' + other + good)
    result = cli("llmft-prepare", "mixed.jsonl", "--out", "out", "--ratios", "0.5", "0.5", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == ["mixed.jsonl", "alpaca", "(detected)", "4", "3", "1", "1", "2"]
    assert "rejected by reason: 1 not valid UTF-8 (byte N at column N)" in result.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"train.jsonl", "val.jsonl", "rejects.jsonl",
                                                             "prepare_report.json"}
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert (reject["file"], reject["line"], reject["column"]) == ("mixed.jsonl", 2, 21)


def test_train_names_a_bad_data_file_without_a_traceback(tmp_path, cache_dir):
    (tmp_path / "faq.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    result = cli("llmft-train", "model=tiny", "eval=none", f"data.path={tmp_path / 'faq.json'}",
                 f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(result, "llmft-train", r"faq.json: cannot tell the data format from the keys of its first "
                                              r"record \(keys: question, answer\)")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_synth_is_deterministic_and_every_format_prepares_cleanly(tmp_path):
    files = {"alpaca": "a.json", "sharegpt": "s.jsonl", "messages": "m.jsonl", "csv": "c.csv", "text": "t.txt"}
    for fmt, name in files.items():
        for seed, folder in ((5, "one"), (5, "two"), (6, "three")):
            (tmp_path / folder).mkdir(exist_ok=True)
            result = cli("llmft-synth", "--format", fmt, "--count", 25, "--seed", seed, "--out",
                         tmp_path / folder / name)
            assert result.returncode == 0 and f"wrote 25 {fmt} records" in result.stderr
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
        assert (tmp_path / "one" / name).read_bytes() != (tmp_path / "three" / name).read_bytes()
        result = cli("llmft-prepare", tmp_path / "one" / name, "--out", tmp_path / fmt)
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / fmt / "prepare_report.json").read_text())
        assert report["files"][0]["format"] == fmt and report["total"]["written"] == 25


def test_check_passes_a_prepared_file_and_prints_token_statistics(tmp_path):
    source = realdata("sharegpt", "dummy_conversation.json")
    assert cli("llmft-prepare", source, "--out", tmp_path).returncode == 0
    result = cli("llmft-check", tmp_path / "val.jsonl", "model=tiny", "data.max_seq_length=128")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'val.jsonl'}: 50 records, all valid (schema: id, messages of role/content, " \
                       "meta; unique ids)"
    assert lines[1].startswith("tokenizer: the tiny model's byte-level tokenizer")
    assert lines[2].startswith("tokens per record: min ") and "longer than data.max_seq_length=128: " in lines[3]


def test_check_lists_invalid_records_and_exits_non_zero(tmp_path):
    good = {"id": "1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    lines = [json.dumps(good), json.dumps({**good, "messages": good["messages"][:1]}), "{oops", json.dumps(good)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("llmft-check", tmp_path / "d.jsonl", "--schema-only")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'd.jsonl'}:2: the last message must be from the assistant",
        f"{tmp_path / 'd.jsonl'}:3: invalid JSON (Expecting property name enclosed in double quotes)",
        f"{tmp_path / 'd.jsonl'}:4: duplicate id '1' (first on line 1)",
        f"{tmp_path / 'd.jsonl'}: 4 records, 3 INVALID (schema: id, messages of role/content, meta; unique ids)"]


@pytest.mark.parametrize("name,content,message", [
    ("a.json", b'[{"id": "1"}]', r"a.json: cannot tell the data format from the keys of its first record \(keys: "
                                r"id\)"),  # a raw file is converted first, as llmft-prepare converts it
    ("a.jsonl", b'[{"id": "1"}]', r"a.jsonl is a JSON array \(it starts with '\['\), but a .jsonl file holds one "
                                 r"JSON object per line"),
    ("e.jsonl", b"", r"e.jsonl is empty"),
])
def test_check_names_a_file_it_cannot_read(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert_clean_error(cli("llmft-check", tmp_path / name, "model=tiny"), "llmft-check", message)


@pytest.mark.slow
def test_check_reads_the_selected_models_tokenizer_and_no_weights(tmp_path):
    record = {"id": "1", "messages": [{"role": "user", "content": "What is a pod?"},
                                      {"role": "assistant", "content": "The smallest deployable unit."}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    cache = tmp_path / "cache"  # empty: loading the model would convert its GGUF weights into cache/models
    result = cli("llmft-check", tmp_path / "d.jsonl", "model=smollm2-135m", f"paths.cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "49,152 tokens; chat template: its own" in result.stdout
    assert "tokens per record: min " in result.stdout and not (cache / "models").exists()
