"""One job over several Slurm tasks: the rendezvous taken from the job's environment (submitit's local executor
runs the tasks here), and the multi-node launcher's Slurm script."""

import json
import os
import subprocess

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from llmft.cluster import rendezvous_from_job
from llmft.config.location import CONFIG_DIR


def test_no_rendezvous_outside_a_job_or_under_a_launcher(monkeypatch):
    for name in ("SLURM_STEP_ID", "SUBMITIT_LOCAL_JOB_ID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert rendezvous_from_job() is False
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("RANK", "3")  # torchrun or accelerate launch inside the job already set it
    assert rendezvous_from_job() is False


def _rendezvous_task() -> tuple:
    """A task of a 2-task job: meets the other through the variables llmft exports, and sums the ranks."""
    import torch
    import torch.distributed as dist

    assert rendezvous_from_job()
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), float(total)


@pytest.mark.slow
def test_tasks_of_one_job_meet_at_the_rendezvous_the_job_environment_gives(tmp_path):
    executor = submitit.LocalExecutor(folder=tmp_path)
    executor.update_parameters(tasks_per_node=2, nodes=1, timeout_min=5)
    job = executor.submit(_rendezvous_task)
    assert sorted(job.results()) == [(0, 2, 1.0), (1, 2, 1.0)]


@pytest.mark.slow
def test_an_fsdp_run_over_two_tasks_of_one_submitit_job_writes_one_run_folder(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    result = subprocess.run(["llmft-train", "-m", "hydra/launcher=slurm-local", "hydra.launcher.tasks_per_node=2",
                             "experiment=smoke", "eval=none", "distributed=fsdp", "trainer.max_steps=2",
                             f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "task 0 of 2" in log and "FSDP2 over 2 processes (cpu)" in log
    assert [p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["0"]
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"


def test_the_multinode_launcher_asks_slurm_for_nodes_times_gpus_with_one_task_per_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here: render only
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm-multinode", "hydra.launcher.partition=gpu",
                                          f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_"), params.pop("submitit_folder")
    # as hydra's submitit launcher hands them to submitit (BaseSubmititLauncher.launch)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m llmft.train", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in script
