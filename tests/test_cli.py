"""``llmft-train`` as a user runs it: a Hydra run folder with the composed config, the log and the results."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.quantization import needs_bitsandbytes


def test_smoke_experiment_from_the_command_line_writes_a_complete_run_folder(tmp_path, cache_dir):
    out = tmp_path / "run"
    cmd = [shutil.which("llmft-train") or sys.executable, "experiment=smoke", "lora.r=4",
           f"paths.cache_dir={cache_dir}", f"hydra.run.dir={out}"]
    if not shutil.which("llmft-train"):
        cmd[1:1] = ["-m", "llmft.train"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {".hydra", "adapter", "metrics.jsonl", "eval_report.json", "summary.json", "train.log"} <= \
        {p.name for p in out.iterdir()}
    composed = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert composed["lora"]["r"] == 4 and composed["model"]["_target_"] == "llmft.models.build_tiny"
    assert "lora.r=4" in yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text())
    log = (out / "train.log").read_text()
    assert "step 4/4" in log and "Done in" in log and str(out) in log
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("overrides,kept_out", [([], True), (["quantization=nf4"], False)])
def test_a_single_run_keeps_bitsandbytes_out_unless_it_uses_it(tmp_path, cache_dir, overrides, kept_out):
    """A run that quantizes nothing and builds nothing of bitsandbytes never imports it (0.8 s of start-up); the
    planner's process baseline follows (``Setup.bitsandbytes``)."""
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('bitsandbytes', sys.modules.get('bitsandbytes', 'absent')))\n"
              "from llmft.train import main\nmain()")
    argv = ["experiment=smoke", "eval=none", "trainer.max_steps=1", *overrides, f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("bitsandbytes None" in result.stdout) == kept_out, result.stdout[-500:]
    from llmft.planning.setup import setup_from_cfg
    assert setup_from_cfg(OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")).bitsandbytes != kept_out


def test_an_optimizer_of_bitsandbytes_needs_it(make_cfg):
    assert not needs_bitsandbytes(make_cfg(["model=tiny"]))
    assert needs_bitsandbytes(make_cfg(["model=tiny", "hardware=gtx1660-6gb", "quantization=none"]))  # its optimizer


def test_help_lists_the_config_groups():
    result = subprocess.run([sys.executable, "-m", "llmft.train", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for group in ("model:", "quantization:", "lora:", "hardware:", "eval:"):
        assert group in result.stdout
    listed = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {line.split(":")[0] for line in listed.splitlines() if ": " in line and not line.startswith("Compose")}
    offered = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    assert groups == offered  # every group a user picks an option of, and nothing else (no hardware/base: profile)


def test_fast_exit_still_runs_exit_handlers_waits_for_threads_and_flushes():
    """``llmft.shutdown.fast_exit`` ends the console scripts: what an orderly exit does that matters still happens."""
    script = ("import atexit, threading, time, sys\nfrom llmft.shutdown import fast_exit\n"
              "atexit.register(lambda: print('handler ran'))\n"
              "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
              "sys.stdout.write('unflushed ')\nfast_exit(3)\nprint('never')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout.split() == ["unflushed", "thread", "done", "handler", "ran"]


def test_a_commands_imports_load_without_garbage_collection_and_stay_out_of_later_ones():
    """``llmft.startup.quiet_collector``: no full collection while the libraries load; what they created is frozen
    (left out of later collections); the collector is on again after; a second use (a sweep's next job) does
    nothing, so what that job creates stays collectable. In a subprocess: freezing is for the whole process."""
    script = ("import gc, json, sys\nfrom llmft.startup import quiet_collector\n"
              "passes = []\ngc.callbacks.append(lambda phase, info: phase == 'start' and passes.append(1))\n"
              "with quiet_collector():\n    inside = gc.isenabled()\n    import torch, transformers\n"
              "    for _ in range(100000): [[]]\n"  # allocations that would have triggered collections
              "during, frozen, after = len(passes), gc.get_freeze_count(), gc.isenabled()\n"
              "with quiet_collector():\n    again = gc.isenabled()\n"
              "print(json.dumps([inside, during, frozen, after, again, gc.get_freeze_count() == frozen]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    inside, during, frozen, after, again, unchanged = json.loads(result.stdout.splitlines()[-1])
    assert not inside and during == 0 and frozen > 100000 and after and again and unchanged
