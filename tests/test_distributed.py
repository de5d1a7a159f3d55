"""Two CPU processes (DDP over gloo, started by `accelerate launch`) train together and write one run folder."""

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_train_together_and_write_one_run_folder(tmp_path, cache_dir):
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate's launcher is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu starts one DDP process per --num_processes; without CUDA they train on the CPU over gloo.
    # (--cpu with several processes needs an MPI set-up in accelerate 1.x, and otherwise starts one process.)
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launch, "-m", "llmft.train", "experiment=smoke",
                             "trainer.max_steps=null", "trainer.num_epochs=2", f"paths.cache_dir={cache_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed"
    # 16 records, micro-batch 8 per process, 2 processes: one optimizer step per epoch, 2 epochs
    steps = [json.loads(line)["step"] for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and summary["train_steps"] == 2
    assert (runs[0] / "adapter" / "adapter_model.safetensors").is_file()
