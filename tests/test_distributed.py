"""Several CPU processes (gloo, started by `accelerate launch`): DDP and FSDP2 train together, follow the one-process
loss curve, write one run folder, and resume from a checkpoint to the same adapter. Under FSDP only the main process
loads the weights, and the base model is evaluated on the shards."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# 16 records, micro-batch 8: two micro-batches per epoch, one optimizer step per epoch, whatever the process count.
# fp32 and no LoRA dropout (each process draws its own masks) so that the curves can be compared tightly; clipping
# at 0.5 is active (the gradient norm is about 0.8).
RUN = ["experiment=smoke", "eval=perplexity", "hardware.precision=fp32", "hardware.micro_batch_size=8", "lora.lora_dropout=0",
       "trainer.learning_rate=3e-3", "trainer.max_grad_norm=0.5", "trainer.save_every=1", "trainer.keep_checkpoints=5"]
LOSS_TOLERANCE = 1e-5   # relative, per step (measured: 0 with DDP, 9e-8 with FSDP)
ADAPTER_TOLERANCE = 1e-6  # absolute, per weight (measured: 0 with DDP, 2e-8 with FSDP)


def launch(processes: int, *overrides: str, cwd, cache_dir, check: bool = True) -> subprocess.CompletedProcess:
    """``llmft.train`` on ``processes`` CPU processes; one process runs without a launcher. ``cache_dir`` None: the
    default model cache (where the README's set-up converted SmolLM2)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "llmft.train"]
    else:
        accelerate = shutil.which("accelerate") or pytest.skip("accelerate's launcher is not on PATH")
        # --multi_gpu starts one process per --num_processes; without CUDA they train on the CPU over gloo.
        # (--cpu with several processes needs an MPI set-up in accelerate 1.x, and otherwise starts one process.)
        command = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llmft.train"]
    cache = [f"paths.cache_dir={cache_dir}"] if cache_dir else []
    result = subprocess.run([*command, *overrides, *cache], cwd=cwd, capture_output=True, text=True, timeout=900,
                            env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run) -> list:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def adapter(run) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """The same run on 1 process (2 micro-batches accumulated) and on 2 processes with DDP and with FSDP."""
    root = tmp_path_factory.mktemp("distributed")
    folders = {}
    for name, processes, extra in (("one", 1, ["hardware.gradient_accumulation_steps=2"]),
                                   ("ddp", 2, ["distributed=ddp"]), ("fsdp", 2, ["distributed=fsdp"]),
                                   ("fsdp-offload", 2, ["distributed=fsdp-offload"])):
        folders[name] = root / name
        result = launch(processes, *RUN, *extra, f"hydra.run.dir={folders[name]}", cwd=root, cache_dir=cache_dir)
        folders[name + "_log"] = result.stdout + result.stderr
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp-offload"])
def test_two_processes_follow_the_one_process_loss_curve_and_end_with_the_same_adapter(runs, mode):
    one, two = losses(runs["one"]), losses(runs[mode])
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=LOSS_TOLERANCE)
    a, b = adapter(runs["one"]), adapter(runs[mode])
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # a whole PEFT adapter, not a shard
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < ADAPTER_TOLERANCE
    assert min(float(b[k].abs().max()) for k in b if "lora_B" in k) > 1e-4  # trained: LoRA B starts at zero


@pytest.mark.slow
def test_fsdp_shards_the_model_and_writes_one_run_folder(runs):
    assert "FSDP2 over 2 processes (cpu)\n" in runs["fsdp_log"]
    assert "FSDP2 over 2 processes (cpu), shards offloaded to host memory" in runs["fsdp-offload_log"]
    assert sorted(p.name for p in runs["fsdp"].parent.iterdir()) == ["ddp", "fsdp", "fsdp-offload", "one"]  # no rank 1
    summary = json.loads((runs["fsdp"] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_steps"] == 4
    assert [p.name for p in (runs["fsdp"] / "checkpoints").iterdir()] != []
    # the adapter is a whole PEFT adapter that llmft-eval reads on one process, as any other
    evaluated = subprocess.run(["llmft-eval", str(runs["fsdp"]), "eval=perplexity"], capture_output=True, text=True,
                               timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert evaluated.returncode == 0 and "(base -> fine-tuned)" in evaluated.stdout + evaluated.stderr


@pytest.mark.slow
def test_under_fsdp_the_base_model_is_evaluated_on_the_shards_to_the_one_process_figures(runs):
    log = runs["fsdp_log"]
    assert log.index("FSDP2 over 2 processes") < log.index("Evaluating the base model")  # after sharding
    for a, b in zip(perplexities(runs["one"]), perplexities(runs["fsdp"])):  # measured: equal to the last bit
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=LOSS_TOLERANCE)
        assert (b["num_samples"], b["total_tokens"]) == (a["num_samples"], a["total_tokens"])


def perplexities(run) -> list:
    """The base model's perplexity figures as computed before training, and the report's base and fine-tuned ones."""
    report = json.loads((run / "eval_report.json").read_text())
    return [json.loads((run / "base_eval.json").read_text())["perplexity"], report["base"], report]


@pytest.mark.slow
def test_a_two_process_fsdp_run_resumed_from_its_checkpoint_ends_with_the_same_adapter(runs, tmp_path, cache_dir):
    stopped = killed_after_step_2(runs["fsdp"], tmp_path / "stopped")
    result = launch(2, f"resume={stopped}", cwd=tmp_path, cache_dir=cache_dir)
    assert "Resumed from" in result.stdout + result.stderr
    assert "Base model figures from" in result.stdout + result.stderr  # the main process's, for every process
    assert losses(stopped) == losses(runs["fsdp"])
    a, b = adapter(runs["fsdp"]), adapter(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (runs["fsdp"], stopped)]
    assert summaries[0]["base_perplexity"] == summaries[1]["base_perplexity"]


# a tiny model made big enough to see: 4 layers of 1024 x 4096, 63M parameters, 121 MiB in bf16
BIG = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8,
       "num_key_value_heads": 4, "max_position_embeddings": 2048}


@pytest.mark.slow
def test_under_fsdp_only_the_main_process_holds_the_whole_weights_before_sharding(tmp_path, cache_dir):
    """Rank 1 builds the model on the meta device and receives its shards from rank 0; with accelerate's
    cpu_ram_efficient_loading off, each process loads the whole weights. Both train to the same loss, in bf16 with
    the base model evaluated first on the shards (that first forward, adapter disabled, once left the adapters'
    bf16 gradients uncast: llmft.distributed.reinit_shards)."""
    from llmft.models import build_tiny

    build_tiny(arch=BIG, cache_dir=cache_dir)  # built here, so that building it is no process's peak
    arch = [f"model.arch.{key}={value}" for key, value in BIG.items()]
    summaries = {}
    for main_only in (True, False):
        run = tmp_path / f"main-only-{main_only}"
        launch(2, "experiment=smoke", *arch, "distributed=fsdp", f"distributed.cpu_ram_efficient_loading={main_only}",
               "hardware.precision=bf16", "eval=perplexity", "hardware.micro_batch_size=1", "data.max_seq_length=256",
               "lora.lora_dropout=0", "trainer.max_steps=2", f"hydra.run.dir={run}", cwd=tmp_path, cache_dir=cache_dir)
        summaries[main_only] = json.loads((run / "summary.json").read_text())
    whole = summaries[False]["weights_loaded_mb_per_process"][0]  # bf16 weights, fp32 adapters
    adapters = summaries[True]["trainable_params"] * 4 / 2**20
    assert whole > 100
    assert summaries[True]["weights_loaded_mb_per_process"] == pytest.approx([whole, adapters], abs=0.1)
    assert summaries[False]["weights_loaded_mb_per_process"] == pytest.approx([whole, whole], abs=0.1)
    assert summaries[True]["final_train_loss"] == pytest.approx(summaries[False]["final_train_loss"], rel=1e-6)


@pytest.mark.slow
def test_the_main_process_failing_to_load_the_model_stops_every_process_with_its_message(tmp_path, cache_dir):
    """Damaged weights: the main process cannot load them, the other builds the model from its config alone and
    would wait for the main process's shards; instead each process stops with the main process's error."""
    from llmft.models import build_tiny

    cache, arch = tmp_path / "cache", {**BIG, "num_hidden_layers": 1}
    folder = Path(build_tiny(arch=arch, cache_dir=str(cache)).source)
    (folder / "model.safetensors").write_bytes(b"damaged")
    started = time.time()
    result = launch(2, "experiment=smoke", *[f"model.arch.{k}={v}" for k, v in arch.items()], "distributed=fsdp", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                    cache_dir=str(cache), check=False)
    assert result.returncode != 0 and time.time() - started < 300
    output = result.stdout + result.stderr
    assert "error: could not read the weights of model tiny-llama" in output  # the main process
    assert "error: process 0 of 2 failed before training, and this one stops with it: ModelLoadError: could not " \
           "read the weights" in output  # the other one
    assert not re.search(r'File ".*/llmft/', output)  # no traceback of ours: one paragraph each


@pytest.mark.slow
def test_resuming_with_another_process_count_is_refused_in_one_paragraph(runs, tmp_path, cache_dir):
    stopped = killed_after_step_2(runs["fsdp"], tmp_path / "stopped")
    refused = launch(1, f"resume={stopped}", cwd=tmp_path, cache_dir=cache_dir, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "written by 2 process(es) and this run has 1" in refused.stderr and "--num_processes 2" in refused.stderr


def killed_after_step_2(run, folder):
    """A copy of ``run`` as a kill after step 2's checkpoint leaves it: no later checkpoint, adapter or summary."""
    shutil.copytree(run, folder)
    shutil.rmtree(folder / "checkpoints" / "step-0000003")
    shutil.rmtree(folder / "adapter")
    (folder / "summary.json").unlink()
    (folder / ".lock").unlink(missing_ok=True)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("quantization, replicated", [("nf4", True), ("nf4-sharded", False)])
def test_qlora_trains_under_fsdp_and_shards_4bit_weights_stored_in_the_compute_dtype(tmp_path, cache_dir, quantization,
                                                                                       replicated):
    result = launch(2, "experiment=smoke", "eval=none", "distributed=fsdp", f"quantization={quantization}",
                    "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache_dir=cache_dir)
    # accelerate leaves 4-bit weights in integer storage out of the shards (and says so); float storage is sharded
    assert ("non-floating frozen Params4bit" in result.stderr) is replicated
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_two_nodes_meet_at_one_rendezvous_and_write_one_run_folder(tmp_path, cache_dir):
    """Two torchrun invocations, as on two machines (here both on localhost), one process each, one c10d rendezvous."""
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    node = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "llmft-test", "-m", "llmft.train",
            "experiment=smoke", "eval=none", "distributed=fsdp", "trainer.max_steps=2", f"paths.cache_dir={cache_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(node, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "FSDP2 over 2 processes (cpu)" in "".join(outputs)
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    assert json.loads((runs[0] / "summary.json").read_text())["status"] == "completed"
    assert [json.loads(line)["step"] for line in (runs[0] / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_after_the_same_step_and_resumes(tmp_path, cache_dir):
    """SIGTERM reaches one process only (as a node's preemption might): all checkpoint after the same step."""
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate's launcher is not on PATH")
    run = tmp_path / "run"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llmft.train", "experiment=smoke",
               "eval=none", "distributed=fsdp", "hardware.micro_batch_size=1", "trainer.max_steps=40",
               f"hydra.run.dir={run}", f"paths.cache_dir={cache_dir}"]
    launcher = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run / "metrics.jsonl", time.time() + 600
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()[-3000:]
        time.sleep(0.05)
    os.kill(rank_pid(launcher.pid, 1), signal.SIGTERM)
    output = launcher.communicate(timeout=600)[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", output[-3000:]
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{summary['interrupted_at_step']:07d}"]
    launch(2, f"resume={run}", cwd=tmp_path, cache_dir=cache_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_steps"] == 40
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 41))


def rank_pid(launcher: int, rank: int) -> int:
    """The process of ``rank`` among the launcher's children (read from /proc)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no process of rank {rank} under {launcher}")
