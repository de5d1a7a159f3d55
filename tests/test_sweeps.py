"""Multirun sweeps on the tiny model: a folder per job, the comparison table and plots, failures isolated."""

import csv
import json
import subprocess
import sys

import pytest

from llmft.config.resolvers import sample_data


def sweep(tmp_path, *overrides, cache_dir, code=0):
    result = subprocess.run([sys.executable, "-m", "llmft.train", "-m", "experiment=smoke", "trainer.max_steps=2",
                             f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}", *overrides],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == code, result.stderr[-3000:]
    with (tmp_path / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_2x2_sweep_writes_four_runs_a_table_and_plots(tmp_path, cache_dir):
    rows = sweep(tmp_path, "lora.r=4,8", "data.max_seq_length=256,384", cache_dir=cache_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {r["overrides"].split(" ", 3)[3] for r in rows} == {f"lora.r={r} data.max_seq_length={n}"
                                                              for r in (4, 8) for n in (256, 384)}
    for n in range(4):
        assert json.loads((tmp_path / str(n) / "summary.json").read_text())["status"] == "completed"
        assert (tmp_path / str(n) / "adapter" / "adapter_model.safetensors").is_file()
    assert {r["trainable_params"] for r in rows} == {"1792", "3584"}  # r=4 and r=8 on q_proj/v_proj of 2 layers
    assert (tmp_path / "sweep_lora.r.png").stat().st_size > 10_000
    assert (tmp_path / "sweep_data.max_seq_length.png").is_file()
    assert (tmp_path / "sweep_summary.md").read_text().count("| completed |") == 4


@pytest.mark.slow
def test_one_failing_point_does_not_lose_the_others(tmp_path, cache_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "messages": [\n')
    rows = sweep(tmp_path / "sweep", f"data.path={sample_data('kubernetes')},{bad}", "lora.r=4,8",
                 cache_dir=cache_dir, code=1)  # the table first, then exit 1: a job failed
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status["completed"]) == 2 and len(by_status["failed"]) == 2
    assert all("invalid JSON" in r["reason"] for r in by_status["failed"])
    assert all(str(bad) in r["overrides"] for r in by_status["failed"])


def test_llmft_compare_tables_any_run_folders(tmp_path):
    for name, r, loss in (("a", 4, 1.5), ("b", 8, 1.2)):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- lora.r={r}\n")
        (folder / "summary.json").write_text(json.dumps({"status": "completed", "eval_loss": loss,
                                                          "perplexity": 2.0, "tokens_per_s": 100.0}))
    result = subprocess.run([sys.executable, "-m", "llmft.sweeps.compare", str(tmp_path / "a"), str(tmp_path / "b"),
                             "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| lora.r=8 | completed |" in result.stdout
    assert (tmp_path / "cmp" / "comparison.csv").is_file() and (tmp_path / "cmp" / "sweep_lora.r.png").is_file()
    empty = subprocess.run([sys.executable, "-m", "llmft.sweeps.compare", str(tmp_path / "cmp")],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no run folder" in empty.stderr


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, cache_dir):
    rows = sweep(tmp_path, "hydra/launcher=slurm-local", "lora.r=4,8", cache_dir=cache_dir)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [r["trainable_params"] for r in rows] == ["1792", "3584"]


@pytest.mark.slow
def test_the_optuna_experiment_minimises_the_validation_loss_each_job_returns(tmp_path, cache_dir):
    import yaml

    result = subprocess.run([sys.executable, "-m", "llmft.train", "-m", "experiment=optuna", "model=tiny",
                             "data.max_samples=16", "trainer.max_steps=2", "eval=perplexity",
                             "hydra.sweeper.n_trials=3", f"paths.cache_dir={cache_dir}",
                             f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    with (tmp_path / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and best["best_value"] == pytest.approx(min(float(r["eval_loss"]) for r in rows))
    assert set(best["best_params"]) == {"trainer.learning_rate", "lora.r"}


@pytest.mark.parametrize("launcher,target", [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher"),
                                             ("slurm-local", "LocalLauncher")])
def test_launcher_configs_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
