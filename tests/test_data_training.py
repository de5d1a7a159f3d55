"""How training uses raw data: any format at data.path, nothing lost (rejects in the run folder), strict mode, the
tokenization cache across runs, plain text, and a tokenizer without a chat template."""

import json
import os

import pytest
from hydra import compose, initialize_config_dir

from llmft.config.location import CONFIG_DIR
from llmft.data.synth import write
from llmft.errors import DataError
from llmft.models.tiny import byte_level_tokenizer
from llmft.pipeline import run
from tests.conftest import TINY, TINY_NO_EVAL


def train(tmp_path, cache_dir, *overrides, eval=False, out="run"):
    overrides = [*(TINY if eval else TINY_NO_EVAL), "trainer.max_steps=2", *overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *overrides])
    return run(cfg, tmp_path / out, overrides=overrides), tmp_path / out


@pytest.fixture
def messy_alpaca(tmp_path):
    """40 good Alpaca records, 3 bad ones (broken JSON, no output, not an object) and 2 duplicates."""
    path = tmp_path / "messy.jsonl"
    with open(path, "w") as out:
        write(out, "alpaca", 40, seed=3)
    lines = path.read_text().splitlines()
    lines[5:5] = ['{"instruction": "broken"', '{"instruction": "no output"}', '["not", "an", "object"]']
    path.write_text("\n".join(lines + lines[:2]) + "\n")
    return path


def test_raw_alpaca_trains_and_the_run_folder_keeps_every_rejected_record(tmp_path, messy_alpaca):
    cache = tmp_path / "cache"
    summary, out = train(tmp_path, cache, f"data.path={messy_alpaca}")
    assert summary["status"] == "completed"
    assert (summary["rejected_records"], summary["duplicate_records"]) == (3, 2)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (6, "invalid JSON (Expecting ',' delimiter)"), (7, "no 'output' key"),
        (8, "expected a JSON object, got an array")]
    report = json.loads((out / "data_report.json").read_text())
    assert report["total"] == {"read": 45, "written": 40, "rejected": 3, "duplicates": 2, "converted": 42}
    assert report["splits"]["val"] == 4 and report["splits"]["train"] + report["splits"]["val"] + \
        report["unused_max_samples"] == 40
    cached = {p: os.stat(p).st_mtime_ns for p in (cache / "tokenized").glob("*.arrow")}
    assert len(cached) == 2  # train and val
    again, _ = train(tmp_path, cache, f"data.path={messy_alpaca}", out="again")
    assert again["status"] == "completed"
    assert {p: os.stat(p).st_mtime_ns for p in (cache / "tokenized").glob("*.arrow")} == cached  # reused as is


def test_strict_mode_stops_the_run_at_the_first_bad_record(tmp_path, cache_dir, messy_alpaca):
    with pytest.raises(DataError, match=rf"{messy_alpaca}:6:25: invalid JSON \(Expecting ',' delimiter\)"):
        train(tmp_path, cache_dir, f"data.path={messy_alpaca}", "data.strict=true")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_a_folder_of_files_in_different_formats_is_pooled(tmp_path, cache_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    for fmt, name, seed in (("sharegpt", "chats.jsonl", 1), ("csv", "faq.csv", 2), ("messages", "more.json", 3)):
        with open(folder / name, "w", newline="") as out:
            write(out, fmt, 20, seed=seed, array=name.endswith(".json"))
    summary, out = train(tmp_path, cache_dir, f"data.path={folder}", "data.chat_template=chatml_tools")  # tool calls
    report = json.loads((out / "data_report.json").read_text())
    assert [(f["file"], f["format"]) for f in report["files"]] == [
        ("chats.jsonl", "sharegpt"), ("faq.csv", "csv"), ("more.json", "messages")]
    assert report["total"]["read"] == 60 and summary["status"] == "completed"


def test_plain_text_trains_on_every_token(tmp_path, cache_dir):
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "w") as out:
        write(out, "text", 30, seed=4)
    summary, out = train(tmp_path, cache_dir, f"data.path={corpus}")
    report = json.loads((out / "data_report.json").read_text())
    assert report["files"][0]["format"] == "text" and summary["status"] == "completed"


def test_a_tokenizer_without_a_chat_template_gets_the_fallback_everywhere(tmp_path, cache_dir):
    folder = tmp_path / "plain-tokenizer"
    tok = byte_level_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(folder)
    summary, out = train(tmp_path, cache_dir, f"model.tokenizer={folder}", "data.fallback_template=alpaca",
                         eval=True)
    assert summary["status"] == "completed"
    saved = json.loads((out / "adapter" / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (out / "adapter" / "chat_template.jinja").read_text()
    assert "### Response:" in template
    answers = json.loads((out / "eval_report.json").read_text())["prompt_results"]
    assert answers and all("finetuned" in a for a in answers)
