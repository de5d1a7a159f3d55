"""What a newcomer meets first (issue 14): each broken step of the first hour, reproduced."""

import json
import os
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from llmft.config.resolvers import sample_data
from llmft.errors import ModelLoadError
from llmft.pipeline import run
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.preflight import plan_run
from llmft.quiet import NOISE
from llmft.sweeps.callback import SweepSummary
from llmft.sweeps.plots import UNSET, axis
from llmft.sweeps.table import collect_runs, write_comparison


def test_a_model_that_is_not_here_is_reported_before_its_memory_budget(make_cfg):
    cfg = make_cfg(["model=qwen2.5-0.5b", "hardware.memory_budget_gb=1"])  # offline: no Qwen weights here
    with pytest.raises(ModelLoadError, match=r"Qwen/Qwen2.5-0.5B-Instruct is not in .*`hf download "):
        plan_run(cfg)
    assert not plan_memory(setup_from_cfg(cfg)).fits  # the budget would have refused it first


def test_an_overridden_model_id_is_refused_before_a_plan_from_the_options_figures(make_cfg, tmp_path):
    cfg = make_cfg(["model.name_or_path=HuggingFaceTB/SmolLM2-360M-Instruct", "hardware.memory_budget_gb=1"])
    with pytest.raises(ModelLoadError, match=r"offline GGUF weights are HuggingFaceTB/SmolLM2-135M-Instruct, not"):
        run(cfg, tmp_path)
    assert "memory_plan" not in json.loads((tmp_path / "summary.json").read_text())


@pytest.mark.parametrize("choice", ["eval=perplexity", "eval=none"])
def test_the_smoke_experiment_runs_with_another_eval(make_cfg, tmp_path, choice):
    summary = run(make_cfg(["experiment=smoke", "trainer.max_steps=1", choice]), tmp_path)
    assert summary["status"] == "completed"
    assert (summary["perplexity"] is None) == (choice == "eval=none")


def _job(folder, status):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- lora.r=4\n")
    (folder / "summary.json").write_text(json.dumps({"status": status, "error": "DataError: bad"}))


def test_a_sweep_whose_every_job_failed_exits_non_zero(tmp_path):
    _job(tmp_path / "0", "failed")
    _job(tmp_path / "1", "failed")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(config)
    assert exited.value.code == 1 and (tmp_path / "sweep_summary.md").is_file()
    _job(tmp_path / "2", "completed")
    SweepSummary().on_multirun_end(config)  # one completed job: the sweep succeeded


def test_llmft_compare_of_a_sweep_and_a_plain_run_plots_and_shortens(tmp_path):
    _job(tmp_path / "plain", "completed")
    (tmp_path / "plain" / ".hydra" / "overrides.yaml").write_text("[]\n")
    for n, lr in enumerate(("0.00012345678901234", "0.0031622776601683794")):
        _job(tmp_path / "sweep" / str(n), "completed")
        (tmp_path / "sweep" / str(n) / ".hydra" / "overrides.yaml").write_text(f"- trainer.learning_rate={lr}\n")
    rows = collect_runs([str(tmp_path / "sweep"), str(tmp_path / "plain")])
    for row, loss in zip(rows, (2.0, 1.5, 1.8)):
        row["eval_loss"] = loss
    paths = write_comparison(rows, tmp_path / "cmp", name="comparison")  # raised TypeError (None < float)
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| trainer.learning_rate=0.0001235 |" in table and "| (none: the defaults) |" in table
    assert "0.00012345678901234" in (tmp_path / "cmp" / "comparison.csv").read_text()  # the CSV keeps it exact
    assert any(p.name == "sweep_trainer.learning_rate.png" for p in paths)
    assert axis(["0.0001", "0.001", "0.01"])[1] == "log" and axis(["256", "512"])[1] == "linear"
    assert axis(["0.001", UNSET])[1] == "category"


def test_llmft_prepare_reads_the_bundled_folder_as_training_does(tmp_path):
    from llmft.data.prepare import prepare

    report = prepare([sample_data("kubernetes")], str(tmp_path / "out"))  # stopped on prompts.json
    assert report["total"]["written"] == 68 and [f["file"] for f in report["files"]] == \
        ["kubernetes/train.jsonl", "kubernetes/val.jsonl"]


@pytest.mark.parametrize("make_path,message", [
    (lambda d: d / "missing.jsonl", "does not exist"),
    (lambda d: (d / "empty.jsonl").write_text("\n  \n") and d / "empty.jsonl", "is empty"),
    (lambda d: (d / "folder").mkdir() or d / "folder", "folder with no data files"),
], ids=["missing", "empty-file", "empty-folder"])
def test_bad_data_paths_stop_in_the_precheck_before_a_run_folder(tmp_path, make_path, message):
    path = make_path(tmp_path)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llmft.train", f"data.path={path}",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    assert time.perf_counter() - start < 15  # the ~6.5 s it took included loading torch; see the README


def test_a_callable_of_ones_own_that_does_not_import_stops_before_a_run_folder(tmp_path):
    env = {**os.environ, "LLMFT_ALLOW_TARGETS": "my_pkg.MyLoop"}  # the README's example, my_pkg not installed
    result = subprocess.run([sys.executable, "-m", "llmft.train", "model=tiny", "trainer._target_=my_pkg.MyLoop",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("trainer._target_=my_pkg.MyLoop cannot be imported (ModuleNotFoundError: No module named 'my_pkg')"
            in result.stderr)
    assert not (tmp_path / "run").exists()  # it left .hydra/ and train.log, and no summary.json


def test_a_key_a_callable_does_not_take_leaves_a_failed_run_not_a_bare_folder(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "llmft.train", "model=tiny", "+model.foo=1",
                             f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "model.foo is not an argument of llmft.models.build_tiny" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "model.foo is not an argument" in summary["error"]
    assert summary["overrides"] == ["model=tiny", "+model.foo=1"]


@pytest.mark.slow
def test_library_noise_is_filtered_at_its_source_and_hydra_verbose_shows_it(tmp_path, cache_dir):
    def smoke(*extra):
        return subprocess.run([sys.executable, "-m", "llmft.train", "experiment=smoke", "trainer.max_steps=1",
                               f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / str(len(extra))}",
                               *extra], capture_output=True, text=True, timeout=300)
    quiet, loud = smoke(), smoke("hydra.verbose=true")
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:]
    for _, message in NOISE:
        assert message not in quiet.stdout + quiet.stderr
    assert "Using default tokenizer." in loud.stdout + loud.stderr  # rouge_score, once per scored answer
    assert "Done in" in quiet.stdout + quiet.stderr
    again = subprocess.run([sys.executable, "-m", "llmft.reevaluate", str(tmp_path / "0")],
                           capture_output=True, text=True, timeout=300)  # llmft-eval scores the answers again
    assert again.returncode == 0, again.stderr[-2000:]
    for message in [m for _, m in NOISE] + ["is_gradient_checkpointing"]:  # peft reading the adapter back
        assert message not in again.stdout + again.stderr


def test_llmft_export_drops_the_library_noise_from_its_first_import():
    result = subprocess.run([sys.executable, "-m", "llmft.export.cli", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "llmft-export" in result.stdout
    for _, message in NOISE:  # bitsandbytes' kernel notice came at the exporter's import, before the filter
        assert message not in result.stdout + result.stderr
