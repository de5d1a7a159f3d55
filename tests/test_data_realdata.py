"""The real third-party files in ../shared/realdata: each prepares with counts that reconcile with an independent
read of the file, trains with the tiny model, and renders through the real chat templates with exact masking."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from llmft.config.location import CONFIG_DIR
from llmft.data.prepare import prepare
from llmft.data.tokenize import tokenize_conversation
from llmft.pipeline import run
from tests.conftest import TINY_NO_EVAL, realdata
from tests.test_data import trained_runs


def alpaca_rows():
    return json.loads(realdata("alpaca", "alpaca_en_demo.json").read_text(encoding="utf-8"))


def csv_rows():
    with open(realdata(*FILES["csv"]), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_counts(name):
    """(records, duplicates) from a plain standard-library read of the file."""
    if name == "alpaca":
        rows = alpaca_rows()
        return len(rows), len(rows) - len({(r["instruction"], r["input"], r["output"]) for r in rows})
    if name == "csv":
        rows = csv_rows()
        return len(rows), len(rows) - len({(r["instruction"], r["response"]) for r in rows})
    key = {"sharegpt": "conversations", "messages": "messages"}[name]
    rows = [r for r in json.loads(realdata(*FILES[name]).read_text(encoding="utf-8")) if r.get("label") is not False]
    return len(rows) + LABELLED_FALSE.get(name, 0), len(rows) - len({json.dumps(r[key]) for r in rows})


FILES = {"alpaca": ("alpaca", "alpaca_en_demo.json"), "sharegpt": ("sharegpt", "dummy_conversation.json"),
         "messages": ("messages", "kto_en_demo.json"),
         "csv": ("csv", "Bitext_Sample_Customer_Support_Training_Dataset.csv")}
DOCUMENTED = {"alpaca": 999, "sharegpt": 500, "messages": 300, "csv": 4514}  # ../shared/realdata/README.md
LABELLED_FALSE = {"messages": 150}  # the KTO file's records labelled false: left out, counted as rejected


def read_outputs(out):
    return [json.loads(line) for s in ("train", "val", "test")
            for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", list(FILES))
def test_each_real_file_prepares_and_the_counts_reconcile(tmp_path, name):
    report = prepare([str(realdata(*FILES[name]))], str(tmp_path))
    records, duplicates = expected_counts(name)
    (counts,) = report["files"]
    assert records == DOCUMENTED[name] == counts["read"]
    rejected = LABELLED_FALSE.get(name, 0)
    assert (counts["format"], counts["detected"], counts["rejected"]) == (name, True, rejected)
    assert counts["duplicates"] == duplicates and counts["written"] == records - duplicates - rejected
    assert sum(report["splits"].values()) == counts["written"] == len(read_outputs(tmp_path))
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == rejected


def test_alpaca_keeps_its_non_ascii_text(tmp_path):
    prepare([str(realdata(*FILES["alpaca"]))], str(tmp_path))
    non_ascii = {(r["instruction"], r["input"], r["output"]) for r in alpaca_rows()
                 if not (r["instruction"] + r["input"] + r["output"]).isascii()}
    written = [r for r in read_outputs(tmp_path) if not "".join(m["content"] for m in r["messages"]).isascii()]
    assert len(written) == len(non_ascii) > 100


def test_csv_multi_line_fields_keep_their_lines_and_lose_the_crlf(tmp_path):
    prepare([str(realdata(*FILES["csv"]))], str(tmp_path))
    outputs = read_outputs(tmp_path)
    multi_line = sum("\n" in r["response"] for r in csv_rows())
    assert multi_line == 3386 == sum("\n" in r["messages"][-1]["content"] for r in outputs)
    assert not any("\r" in m["content"] for r in outputs for m in r["messages"])
    assert sum("{{" in r["messages"][-1]["content"] for r in outputs) > 1000  # placeholders are plain text


@pytest.mark.parametrize("name", list(FILES))
def test_each_real_file_trains_with_the_tiny_model(tmp_path, cache_dir, name):
    overrides = [*TINY_NO_EVAL, "trainer.max_steps=2", f"data.path={realdata(*FILES[name])}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *overrides])
    summary = run(cfg, tmp_path, overrides=overrides)
    assert summary["status"] == "completed" and summary["train_steps"] == 2
    assert summary["rejected_records"] == LABELLED_FALSE.get(name, 0)
    assert summary["duplicate_records"] == expected_counts(name)[1]
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["files"][0]["format"] == name and report["files"][0]["detected"]
    assert report["total"]["read"] == DOCUMENTED[name]


@pytest.mark.parametrize("tokenizer,tail,last_tail", [
    ("qwen2-instruct", "<|im_end|>\n", "<|im_end|>\n"),
    ("phi-3-mini", "<|end|>", "<|end|><|endoftext|>"),  # Phi-3 closes a conversation with EOS
])
@pytest.mark.parametrize("name", ["sharegpt", "messages"])
def test_real_templates_train_on_exactly_the_replies_of_real_conversations(tmp_path, tokenizer, tail, last_tail, name):
    tok = AutoTokenizer.from_pretrained(realdata("tokenizers", tokenizer))
    prepare([str(realdata(*FILES[name]))], str(tmp_path))
    conversations = sorted(read_outputs(tmp_path), key=lambda r: -len(r["messages"]))[:25]
    for record in conversations:
        out = tokenize_conversation(tok, record["messages"], 8192)
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        expected = [r + tail for r in replies[:-1]] + [replies[-1] + last_tail]
        assert [tok.decode(run) for run in trained_runs(out["labels"])] == expected, record["id"]
