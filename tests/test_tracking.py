"""Weights & Biases offline: a run per job in one group per sweep, read back from the offline run files."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmft.tracking import flat_config, run_name, sweep_group

SECRET = "hf_not_a_real_token_5up3rs3cr3t"


def wandb_records(run_dir: Path):
    """Decode an offline ``run-*.wandb`` file: W&B's log of length-prefixed protobuf records in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending = next(run_dir.glob("run-*.wandb")).read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: Path) -> dict:
    out = {"history": [], "summary": {}}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, name=record.run.display_name, job_type=record.run.job_type,
                       tags=list(record.run.tags),
                       config={i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
    return out


@pytest.mark.slow
def test_a_sweep_logs_one_offline_run_per_job_in_one_group_without_secrets(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HF_TOKEN=SECRET, HOME=str(tmp_path))  # no ~/.netrc: no credentials
    result = subprocess.run([sys.executable, "-m", "llmft.train", "-m", "experiment=smoke", "trainer.max_steps=3",
                             "logger=wandb", "lora.r=4,8", f"paths.cache_dir={cache_dir}",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("W&B: no credentials, logging offline") == 1
    runs = [read_offline_run(next((tmp_path / "sweep" / str(n) / "wandb").glob("offline-run-*"))) for n in (0, 1)]
    assert runs[0]["group"] == runs[1]["group"] == f"sweep-{tmp_path.name}-sweep"
    assert [r["config"]["lora.r"] for r in runs] == [4, 8] and runs[0]["job_type"] == "train"
    assert runs[1]["name"] == "experiment=smoke trainer.max_steps=3 lora.r=8"
    assert "lora.r=8" in runs[1]["tags"]
    losses = [h["train/loss"] for h in runs[0]["history"] if "train/loss" in h]
    metrics = [json.loads(line) for line in (tmp_path / "sweep" / "0" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([m["loss"] for m in metrics])
    assert runs[0]["summary"]["eval/perplexity"] == pytest.approx(
        json.loads((tmp_path / "sweep" / "0" / "eval_report.json").read_text())["perplexity"])
    assert any("eval/answers" in k for h in runs[0]["history"] for k in h)
    for path in (tmp_path / "sweep").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_flat_config_redacts_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    cfg = OmegaConf.create({"lora": {"r": 8}, "model": {"token": "abc", "name": f"x-{SECRET}"}, "api_key": "k"})
    assert flat_config(cfg) == {"lora.r": 8, "model.token": "<redacted>", "model.name": "<redacted>",
                                "api_key": "<redacted>"}


def test_names_and_groups(tmp_path):
    assert run_name(["lora.r=8", "paths.cache_dir=/x", "data.max_seq_length=256"], tmp_path) == \
        "lora.r=8 data.max_seq_length=256"
    assert run_name([], tmp_path / "12-00-00") == "12-00-00"
    (tmp_path / "multirun.yaml").write_text("{}")
    (tmp_path / "0").mkdir()
    assert sweep_group(tmp_path / "0") == f"sweep-{tmp_path.parent.name}-{tmp_path.name}"
    assert sweep_group(tmp_path) is None
