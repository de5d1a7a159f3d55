"""Small data: no validation split (data.val_ratio=0), a one-record file, and the same split in llmft-prepare and
training for the same seed and ratios."""

import json

from llmft.config.validate import validate
from llmft.data import load_splits
from llmft.data.formats import auto
from llmft.data.prepare import prepare
from llmft.data.splits import NO_VALIDATION
from llmft.pipeline import run
from tests.conftest import TINY_NO_EVAL, realdata

ONE = {"instruction": "What is a pod?", "output": "The smallest deployable unit."}


def test_val_ratio_0_keeps_every_record_for_training_and_the_report_says_so(tmp_path, make_cfg):
    validate(make_cfg(["model=tiny", "data.val_ratio=0"]))
    splits = load_splits(auto, str(realdata("alpaca", "alpaca_en_demo.json")), val_ratio=0, report_dir=tmp_path)
    assert len(splits.train) == splits.report["total"]["written"] and splits.val == []
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["splits"] == {"train": len(splits.train), "val": 0} and report["validation"] == NO_VALIDATION


def test_prepare_and_training_put_the_same_records_in_the_same_splits(tmp_path):
    source = str(realdata("sharegpt", "dummy_conversation.json"))
    prepare([source], str(tmp_path), seed=7, ratios=(0.85, 0.15, 0))
    prepared = {s: [json.loads(line)["id"] for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()]
                for s in ("train", "val")}
    splits = load_splits(auto, source, val_ratio=0.15, seed=7)
    assert [r["id"] for r in splits.train] == prepared["train"] and [r["id"] for r in splits.val] == prepared["val"]
    assert len(prepared["val"]) == 75


def test_a_one_record_file_trains(tmp_path, make_cfg):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(ONE) + "\n")
    splits = load_splits(auto, str(data))  # the default data.val_ratio=0.1 holds nothing out of one record
    assert len(splits.train) == 1 and splits.val == [] and splits.report["validation"] == NO_VALIDATION
    overrides = [*TINY_NO_EVAL, "trainer.max_steps=2", f"data.path={data}"]
    summary = run(make_cfg(overrides), tmp_path / "run", overrides=overrides)
    assert summary["status"] == "completed" and summary["train_records"] == 1 and summary["train_steps"] == 2
