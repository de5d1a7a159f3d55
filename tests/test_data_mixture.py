"""Sources beyond text files: parquet files and shard folders, save_to_disk folders, hub datasets (offline), and
mixtures of sources with weights and caps, reported per source."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmft.data import load_splits
from llmft.data.formats import auto
from llmft.data.prepare import prepare
from llmft.errors import DataError
from llmft.pipeline import run
from tests.conftest import TINY_NO_EVAL, realdata

ALPACA = ("alpaca", "alpaca_en_demo.json")


def alpaca_rows():
    return json.loads(realdata(*ALPACA).read_text(encoding="utf-8"))


def reconciles(report):
    t = report["total"]
    return t["read"] == t["written"] + t["rejected"] + t["duplicates"]


def test_parquet_shards_read_as_the_json_they_were_written_from(tmp_path):
    rows = alpaca_rows()
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for n, part in enumerate((rows[:400], rows[400:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "hub" / "data" / f"train-0000{n}-of-00002.parquet",
                       row_group_size=100)
    from_json = prepare([str(realdata(*ALPACA))], str(tmp_path / "a"))
    from_parquet = prepare([str(tmp_path / "hub")], str(tmp_path / "b"))
    assert [f["format"] for f in from_parquet["files"]] == ["alpaca", "alpaca"] and reconciles(from_parquet)
    assert from_parquet["total"] == from_json["total"] and from_parquet["splits"] == from_json["splits"]
    def records(out):
        return [(r["id"], r["messages"]) for r in map(json.loads, (out / "val.jsonl").read_text().splitlines())]
    assert records(tmp_path / "a") == records(tmp_path / "b")
    splits = load_splits(auto, str(tmp_path / "hub"))  # training finds the train-* shards of the folder
    assert len(splits.train) + len(splits.val) == from_json["total"]["written"]


def test_a_save_to_disk_folder_is_one_source(tmp_path):
    import datasets

    datasets.Dataset.from_list(alpaca_rows()).save_to_disk(str(tmp_path / "saved"))
    splits = load_splits(auto, str(tmp_path / "saved"), val_ratio=0.1)
    assert splits.report["files"][0]["format"] == "alpaca" and splits.report["total"]["read"] == 999
    assert reconciles(splits.report)


def test_a_hub_dataset_that_is_not_cached_offline_is_one_paragraph(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^data.path=hf://llmft-test/not-cached:train: the dataset is not in the "
                                        r"Hugging Face cache \(.*\) and offline mode is on \(HF_HUB_OFFLINE\).*"
                                        r"save_to_disk\('DIR'\)\", copy DIR here and pass data.path=DIR\.$"):
        load_splits(auto, "hf://llmft-test/not-cached")


def test_a_mixture_honours_weights_and_caps_and_reports_each_source(tmp_path, make_cfg):
    sharegpt = realdata("sharegpt", "dummy_conversation.json")
    sources = (f"[{{path: '{realdata(*ALPACA)}', weight: 1, max_records: 300}}, "
               f"{{path: '{sharegpt}', data_format: sharegpt, weight: 2}}, "
               f"{{path: '{realdata('messages', 'kto_en_demo.json')}', data_format: messages, "
               "format_args: {label: null}, max_records: 50}]")
    overrides = [*TINY_NO_EVAL, "trainer.max_steps=2", "data.max_samples=null", f"data.sources={sources}"]
    summary = run(make_cfg(overrides), tmp_path, overrides=overrides)
    assert summary["status"] == "completed"
    report = json.loads((tmp_path / "data_report.json").read_text())
    alpaca, chats, kto = report["sources"]
    # the capped 300 and the 450 available at weights 1:2: 225 and 450; kto capped, unweighted
    assert (alpaca["train_used"], chats["train_used"], kto["train_used"]) == (225, 450, 50)
    assert chats["train_available"] == 450 and kto["written"] == 300 and reconciles(report)
    assert report["splits"]["train"] == 725 == summary["train_records"] + summary["dropped_records"]


@pytest.mark.parametrize("source,message", [
    ({"weight": 1}, r"data.sources\[0\] is \{'weight': 1\}: each source needs a path"),
    ({"path": "x.json", "share": 1}, r"data.sources\[0\] has unknown keys share"),
    ({"path": "x.json", "weight": 0}, r"data.sources\[0\].weight=0 must be a number above 0"),
    ({"path": "x.json", "data_format": "parquet"}, r"data_format 'parquet' of source x.json is not an option"),
])
def test_a_bad_source_is_named(source, message):
    with pytest.raises(DataError, match=message):
        load_splits(auto, None, sources=[source])
