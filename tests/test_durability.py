"""Runs that survive: kill -9, SIGTERM and Ctrl-C mid-run, then resume to exactly the uninterrupted result."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

# the tiny model with accumulation 2 over micro-batches of 2, dropout on: every source of non-determinism matters
RUN = ["model=tiny", "data.max_samples=32", "data.max_seq_length=384", "hardware.micro_batch_size=2",
       "hardware.gradient_accumulation_steps=2", "trainer.max_steps=20", "trainer.save_every=1",
       "trainer.learning_rate=3e-3", "eval=none"]


def llmft(*args, cache_dir, check=True, **kwargs):
    result = subprocess.run([sys.executable, "-m", "llmft.train", *args, f"paths.cache_dir={cache_dir}"],
                            capture_output=True, text=True, timeout=600, **kwargs)
    result.out = result.stdout + result.stderr  # the log goes to stdout, errors to stderr
    if check:
        assert result.returncode == 0, result.out[-3000:]
    return result


def start(*args, cache_dir):
    return subprocess.Popen([sys.executable, "-m", "llmft.train", *args, f"paths.cache_dir={cache_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(folder, step, proc, timeout=300):
    """Block until ``metrics.jsonl`` has ``step`` lines (the process is still training)."""
    metrics, deadline = folder / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") >= step:
            return
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.002)
    raise AssertionError(f"no step {step} within {timeout} s")


def steps(folder):
    return [(r["step"], r["loss"], r["learning_rate"]) for r in map(json.loads, (folder / "metrics.jsonl").open())
            if "loss" in r]


def assert_same_run(a, b):
    assert steps(a) == steps(b)  # each step exactly once, with the same loss and learning rate
    wa, wb = (load_file(str(f / "adapter" / "adapter_model.safetensors")) for f in (a, b))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), "adapters differ"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("whole") / "run"
    llmft(*RUN, f"hydra.run.dir={out}", cache_dir=cache_dir)
    return out


def test_kill_9_at_a_random_step_then_resume_gives_the_uninterrupted_adapter(uninterrupted, tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = start(*RUN, f"hydra.run.dir={out}", cache_dir=cache_dir)
    wait_for_step(out, random.randint(3, 12), proc)
    proc.kill()
    proc.wait()
    assert not (out / "summary.json").exists()
    resumed = llmft(f"resume={out}", cache_dir=cache_dir)
    assert "Resumed from" in resumed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] >= 1
    assert_same_run(uninterrupted, out)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_says_how_to_resume_and_resumes_exactly(uninterrupted, tmp_path, cache_dir, sig, code):
    out = tmp_path / "run"
    proc = start(*RUN, "trainer.save_every=null", f"hydra.run.dir={out}", cache_dir=cache_dir)
    wait_for_step(out, random.randint(3, 12), proc)
    proc.send_signal(sig)
    out_, err = proc.communicate(timeout=300)
    assert proc.returncode == code, (out_ + err)[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_at_step"] >= 3
    assert f"llmft-train resume={out.resolve()}" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{summary['interrupted_at_step']:07d}"]
    llmft(f"resume={out}", "trainer.save_every=null", cache_dir=cache_dir)
    assert_same_run(uninterrupted, out)


def test_a_damaged_checkpoint_is_named_skipped_and_the_previous_one_used(uninterrupted, tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = start(*RUN, "trainer.keep_checkpoints=3", f"hydra.run.dir={out}", cache_dir=cache_dir)
    wait_for_step(out, 8, proc)
    proc.kill()
    proc.wait()
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    with open(newest / "optimizer.pt", "r+b") as f:  # flip one byte in the middle
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    resumed = llmft(f"resume={out}", cache_dir=cache_dir)
    assert f"Skipping checkpoint {newest.name}: " in resumed.out and "does not match its checksum" in resumed.out
    assert_same_run(uninterrupted, out)


def test_resume_refuses_an_override_that_changes_the_result_and_names_it(tmp_path, cache_dir):
    out = tmp_path / "run"
    llmft(*RUN, "trainer.max_steps=2", f"hydra.run.dir={out}", cache_dir=cache_dir)
    (out / "summary.json").unlink()  # as if it had been killed
    refused = llmft(f"resume={out}", "lora.r=4", cache_dir=cache_dir, check=False)
    assert refused.returncode == 2 and "(lora.r=4; the run has its saved value)" in refused.stderr
    assert "Traceback" not in refused.stderr and "lora.r=4" not in (out / ".hydra" / "overrides.yaml").read_text()
    assert llmft(f"resume={out}", "trainer.log_every=2", cache_dir=cache_dir).returncode == 0


def test_a_new_run_never_writes_into_another_runs_folder(tmp_path, cache_dir):
    out = tmp_path / "run"
    llmft(*RUN, "trainer.max_steps=1", f"hydra.run.dir={out}", cache_dir=cache_dir)
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    again = llmft(*RUN, "trainer.max_steps=1", "seed=7", f"hydra.run.dir={out}", cache_dir=cache_dir, check=False)
    assert again.returncode != 0 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, cache_dir):
    procs = [start(*RUN, "trainer.max_steps=1", cache_dir=cache_dir) for _ in range(2)]
    folders = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        folders.append(out.split("Run folder: ")[1].split()[0])
    assert folders[0] != folders[1]
    for folder in folders:
        assert json.loads(open(os.path.join(folder, "summary.json")).read())["status"] == "completed"


def test_a_sweep_resumes_only_its_unfinished_jobs(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = start("-m", *RUN, "lora.r=2,4", f"hydra.sweep.dir={sweep}", cache_dir=cache_dir)
    wait_for_step(sweep / "1", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, (out + err)[-2000:]
    assert f"llmft-train -m resume={sweep}" in err
    first = (sweep / "0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    resumed = llmft("-m", f"resume={sweep}", cache_dir=cache_dir)
    assert "already completed" in resumed.out
    assert (sweep / "0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == first
    summary = json.loads((sweep / "1" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] >= 5
    assert (sweep / "sweep_summary.csv").is_file()


def _limit_file_size(limit):
    def preexec():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _mount_small_tmpfs(path):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it here")


@pytest.mark.parametrize("how", ["file-size-limit", "full-tmpfs"])
def test_a_full_disk_gives_one_clear_error_and_leaves_no_half_written_file(tmp_path, cache_dir, how):
    llmft(*RUN, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'warm'}", cache_dir=cache_dir)  # model cached
    out, kwargs = tmp_path / "run", {}
    if how == "full-tmpfs":
        _mount_small_tmpfs(tmp_path / "disk")
        out = tmp_path / "disk" / "run"
    else:
        kwargs["preexec_fn"] = _limit_file_size(40_000)  # the checkpoint's optimizer state is larger
    try:
        result = llmft(*RUN, f"hydra.run.dir={out}", cache_dir=cache_dir, check=False, **kwargs)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "could not write" in result.stderr and "full" in result.stderr and "Traceback" not in result.stderr
        for path in out.rglob("*"):
            assert ".tmp" not in path.name, f"left behind: {path}"
            if path.suffix == ".json" and path.stat().st_size:
                json.loads(path.read_text())  # whole, or absent
            if path.suffix in (".json", ".safetensors", ".pt"):
                assert path.stat().st_size > 0, f"0-byte {path}"
        assert not list((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else True
    finally:
        if how == "full-tmpfs":
            subprocess.run(["umount", str(tmp_path / "disk")])


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_damaged_tokenization_cache_is_reported_rebuilt_and_never_trained_on(tmp_path, caplog, damage):
    from llmft.data.tokenize import tokenize_records
    from llmft.models.tiny import byte_level_tokenizer

    tok = byte_level_tokenizer()
    records = [{"id": str(i), "messages": [{"role": "user", "content": f"question {i}"},
                                           {"role": "assistant", "content": f"answer {i}"}]} for i in range(20)]
    first, _ = tokenize_records(records, tok, 128, cache_dir=str(tmp_path))
    expected = first["input_ids"]
    cache = next((tmp_path / "tokenized").glob("*.arrow"))
    del first
    data = bytearray(cache.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # same size, one bit changed
        data[len(data) // 2] ^= 1
    cache.write_bytes(bytes(data))
    second, _ = tokenize_records(records, tok, 128, cache_dir=str(tmp_path))
    assert "does not match its checksum" in caplog.text and str(cache) in caplog.text
    assert second["input_ids"] == expected


def _tool(module, *args):
    result = subprocess.run([sys.executable, "-c", f"from {module} import main; main()", *args],
                            capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_eval_and_export_refuse_an_interrupted_run_or_an_altered_adapter_naming_the_file(tmp_path, cache_dir):
    out = tmp_path / "run"
    llmft(*RUN, "trainer.max_steps=2", f"hydra.run.dir={out}", cache_dir=cache_dir)
    adapter = out / "adapter" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-10] ^= 1
    adapter.write_bytes(bytes(data))
    for module in ("llmft.reevaluate", "llmft.export.cli"):
        code, text = _tool(module, str(out))
        assert code != 0 and f"{adapter} does not match its checksum" in text and "Traceback" not in text
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    code, text = _tool("llmft.reevaluate", str(out))
    assert code != 0 and "did not complete (status interrupted" in text


def test_resume_checks_the_saved_overrides_like_a_command_line(tmp_path, cache_dir):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    llmft(*RUN, "trainer.max_steps=1", f"hydra.run.dir={out}", cache_dir=cache_dir)
    (out / "summary.json").unlink()
    overrides = out / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- +eval.pwn._target_=pathlib.Path.touch\n- +eval.pwn.self={marker}\n")
    refused = llmft(f"resume={out}", cache_dir=cache_dir, check=False)
    assert refused.returncode == 2 and "pathlib.Path.touch" in refused.stderr and not marker.exists()
