"""A DPO run stopped by SIGTERM after a checkpoint resumes to exactly the adapter of an uninterrupted run (the
helpers of tests/test_durability.py, on the real pairs of ../shared/realdata/preference/dpo_en_demo.json)."""

import json
import random
import signal

from tests.conftest import realdata
from tests.test_durability import assert_same_run, llmft, start, wait_for_step

# the tiny model, accumulation 2 over micro-batches of 2 pairs, LoRA dropout on, a checkpoint every 2 steps
RUN = ["model=tiny", "objective=dpo", "data.max_samples=32", "data.max_seq_length=128",
       "hardware.micro_batch_size=2", "hardware.gradient_accumulation_steps=2", "trainer.max_steps=10",
       "trainer.save_every=2", "trainer.learning_rate=3e-3", "eval=none"]


def test_a_dpo_run_stopped_by_sigterm_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(tmp_path, cache_dir):
    data = f"data.path={realdata('preference', 'dpo_en_demo.json')}"
    whole, out = tmp_path / "whole", tmp_path / "run"
    llmft(*RUN, data, f"hydra.run.dir={whole}", cache_dir=cache_dir)
    proc = start(*RUN, data, f"hydra.run.dir={out}", cache_dir=cache_dir)
    wait_for_step(out, random.randint(3, 8), proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, (stdout + stderr)[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    stopped = summary["interrupted_at_step"]
    assert summary["status"] == "interrupted" and stopped >= 3
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert saved[0] < stopped and saved[0] % 2 == 0 and saved[-1] == stopped  # a periodic one, then SIGTERM's
    resumed = llmft(f"resume={out}", cache_dir=cache_dir)
    assert "Resumed from" in resumed.out
    assert_same_run(whole, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert all("rewards/margin" in r for r in rows if "loss" in r)  # the DPO figures on both sides of the stop
