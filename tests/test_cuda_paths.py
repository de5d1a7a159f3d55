"""The CUDA paths, tested on a CPU: only torch's view of the machine (``torch.cuda.*``) is replaced, never llmft's
logic; fp16's loss scaling with torch's real CPU ``GradScaler``; precision sweeps and evaluations end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from llmft import hardware, recording
from llmft.adapters import apply_lora
from llmft.config.location import CONFIG_DIR
from llmft.data import pad_collate
from llmft.errors import ConfigError
from llmft.loop import Hardware, TrainingLoop
from llmft.models import build_tiny
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.preflight import GIB, card_budget, emulate_budget, memory_summary
from llmft.recording import RunRecorder
from tests.conftest import TINY, TINY_NO_EVAL

ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine whose torch sees an initialised CUDA device (as after bitsandbytes' import) that allocated 0 bytes."""
    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=int(5.8 * GIB)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))  # a GTX 1660
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, d=None: calls.setdefault("fraction", []).append((f, d)))
    return calls


def test_a_cpu_run_on_a_cuda_machine_measures_host_memory(fake_cuda, make_cfg):
    assert recording.peak_memory_mb("cpu") > 10  # this process's resident peak, not the GPU's 0
    assert recording.peak_reserved_mb("cpu") is None
    assert recording.peak_memory_mb("cuda") == 0
    plan = plan_memory(setup_from_cfg(make_cfg(TINY)))
    out = memory_summary(plan, {"status": "completed", "longest_sequence": 100}, 0.0)  # no ZeroDivisionError
    assert "memory_plan" in out and "memory_error_pct" not in out


def test_each_rank_computes_on_its_own_gpu(fake_cuda, monkeypatch):
    assert hardware.run_device("cpu") == "cpu" and hardware.run_device("cuda") == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "1")  # what `accelerate launch` sets in the second process
    assert hardware.run_device("cuda") == "cuda:1"
    assert hardware.use_device("cuda") == "cuda:1" and fake_cuda["set_device"] == "cuda:1"
    assert hardware.use_device("cpu") == "cpu"


def test_quantized_weights_load_onto_the_ranks_gpu(fake_cuda, monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmft.models import loading

    build_tiny(arch=ARCH, cache_dir=str(tmp_path))
    folder = next(p.parent for p in tmp_path.rglob("config.json"))
    seen = {}

    def spy(source, **kwargs):  # what transformers would be asked; loading 4-bit weights needs the real GPU
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(Exception, match="stop here"):
        loading.load_from(str(folder), name="tiny", quantization_config=SimpleNamespace(), dtype="float16",
                          device="cuda")
    assert seen["device_map"] == {"": "cuda:1"} and seen["dtype"] == torch.float16


def test_tf32_on_ampere_and_newer_only(fake_cuda, monkeypatch):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        hardware.use_device("cuda")  # compute capability 7.5
        assert torch.backends.cuda.matmul.allow_tf32 is False
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 9))  # an RTX 4090
        hardware.use_device("cuda")
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_runs_weights_reload_at_its_precision_where_its_device_is(fake_cuda, monkeypatch):
    assert hardware.weights_dtype("fp16", "cuda") == "float16" and hardware.weights_dtype("bf16", "cpu") == "bfloat16"
    assert hardware.weights_dtype("fp16", "cpu") == "float32" and hardware.weights_dtype("fp32", "cuda") == "float32"
    assert hardware.load_device("cuda") == "cuda" and hardware.load_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.load_device("cuda") == "cpu"  # a GPU run read on a laptop


def test_the_budget_is_the_cards_real_total_when_smaller(fake_cuda, make_cfg, monkeypatch):
    gtx = setup_from_cfg(make_cfg([*TINY, "hardware=gtx1660-6gb"]))
    assert card_budget(gtx).budget_gb == pytest.approx(5.8)  # a "6 GB" card holds 5.8 GiB
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=139 * GIB))
    h100 = setup_from_cfg(make_cfg([*TINY, "hardware=h100-80gb"]))
    assert card_budget(h100).budget_gb == 80  # a larger card (an H200) is planned as the profile's
    cpu = setup_from_cfg(make_cfg(TINY))
    assert card_budget(cpu) is cpu


def test_the_emulated_cap_is_set_on_the_runs_gpu_and_lifted_after_the_job(fake_cuda, make_cfg, monkeypatch):
    from llmft.train import release_memory

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: None)
    out = emulate_budget(make_cfg([*TINY, "hardware=gtx1660-6gb", "hardware.emulate=true"]))
    fraction, device = fake_cuda["fraction"][0]
    assert device == torch.device("cuda:1") and fraction == pytest.approx(out["emulated_memory_fraction"], abs=1e-4)
    release_memory()
    assert fake_cuda["fraction"][-1][0] == 1.0


def test_flash_attention_2_is_refused_where_it_cannot_run(fake_cuda, monkeypatch):
    with pytest.raises(ConfigError, match="only on a CUDA GPU.*attn_implementation=sdpa"):
        hardware.check_attention("flash_attention_2", "cpu")
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.raises(ConfigError, match="flash-attn package is not installed"):
        hardware.check_attention("flash_attention_2", "cuda")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    with pytest.raises(ConfigError, match="compute capability 7.5"):
        hardware.check_attention("flash_attention_2", "cuda")
    hardware.check_attention("sdpa", "cpu")


def test_fp16_on_a_model_trained_in_bf16_warns_what_to_do(caplog):
    from transformers import LlamaConfig

    from llmft.models.loading import warn_fp16

    warn_fp16(LlamaConfig(dtype="float16"), "m")
    assert not caplog.records
    warn_fp16(LlamaConfig(dtype="bfloat16"), "m")
    assert "trained in bfloat16" in caplog.text and "hardware.precision=fp32" in caplog.text


def _tiny_lora(tmp_path, modules_to_save=None, dtype="float32"):
    loaded = build_tiny(arch=ARCH, cache_dir=str(tmp_path), dtype=dtype)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                      modules_to_save=modules_to_save)
    return apply_lora(loaded.model, lora, gradient_checkpointing=False), loaded.tokenizer


def test_modules_to_save_train_in_fp32_under_fp16_autocast(tmp_path):
    """Weights loaded in fp16 as on a GPU: the scaler unscales every trainable gradient (it refuses fp16 ones)."""
    model, tok = _tiny_lora(tmp_path, modules_to_save=["lm_head"], dtype="float16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.shape[0] == len(tok) for p in trainable)  # the saved lm_head copy trains
    assert {p.dtype for p in trainable} == {torch.float32}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    batch = pad_collate([{"input_ids": list(range(5, 30))}] * 2, pad_token_id=tok.pad_token_id)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    scaler.unscale_(opt)  # "Attempting to unscale FP16 gradients" when a trainable parameter is fp16
    scaler.step(opt)
    assert all(torch.isfinite(p).all() for p in trainable)


def test_skipped_scaler_steps_are_counted_and_do_not_advance_the_schedule(tmp_path, monkeypatch):
    """fp16's loss scaler (torch's real one, on the CPU) starts at a scale that overflows: it skips steps and halves
    the scale until the gradients are finite; those steps are reported and the learning rate waits for them."""
    from accelerate import Accelerator

    from llmft import loop

    def with_scaler(precision, device, plugin):
        accelerator = Accelerator(cpu=True)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1000)
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", with_scaler)
    model, tok = _tiny_lora(tmp_path)
    data = [{"input_ids": list(range(5 + i, 40 + i))} for i in range(8)]
    trainer = TrainingLoop(learning_rate=1e-3, weight_decay=0.0, num_epochs=1, max_steps=6, warmup_ratio=0.0,
                           lr_scheduler="linear", max_grad_norm=1.0, log_every=1, eval_every=None,
                           save_every=None, save_each_epoch=False, keep_checkpoints=2)
    result = trainer.fit(model, data, lambda f: pad_collate(f, pad_token_id=tok.pad_token_id),
                         batch_plan=lambda epoch: [[0, 1], [2, 3], [4, 5], [6, 7]], hardware=Hardware(),
                         optimizer=torch.optim.AdamW, recorder=RunRecorder(tmp_path / "run"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= result.skipped_steps < 6 and rows[-1]["skipped_steps"] == result.skipped_steps
    assert trainer.state_dict()["skipped"] == result.skipped_steps  # in the checkpointed state: resumes exactly
    skipped = [b["skipped_steps"] - a["skipped_steps"] for a, b in zip([{"skipped_steps": 0}, *rows], rows)]
    for k in range(len(rows) - 1):  # row k's rate is read before step k: it moves only after a step that updated
        assert (rows[k + 1]["learning_rate"] == rows[k]["learning_rate"]) == bool(skipped[k])


def test_base_and_fine_tuned_perplexity_agree_when_training_moves_nothing_under_bf16(make_cfg, tmp_path):
    """LoRA starts as the identity (lora_B = 0), and a learning rate of 1e-30 leaves it there in bf16: the two
    evaluations differ only if they compute at different precisions (the base once ran without autocast)."""
    from llmft.pipeline import run

    cfg = make_cfg([*TINY_NO_EVAL, "eval=perplexity", "hardware.precision=bf16", "trainer.learning_rate=1e-30",
                    "trainer.max_steps=1"])
    summary = run(cfg, tmp_path)
    assert summary["perplexity"] == pytest.approx(summary["base_perplexity"], rel=1e-6)


def precision_sweep(tmp_path, cache_dir, *launcher):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "llmft.train", "-m", "experiment=smoke", "trainer.max_steps=2",
                             "eval=perplexity", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}",
                             "hardware.precision=fp32,bf16", *launcher], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((tmp_path / str(n) / "summary.json").read_text()) for n in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=parallel", "hydra.launcher.n_jobs=1"]],
                         ids=["basic", "joblib-one-worker"])
def test_a_precision_sweep_runs_each_job_at_its_own_precision(tmp_path, cache_dir, launcher):
    """Both launchers run the jobs in one process (joblib with one worker reuses it): accelerate's process-wide
    state from the fp32 job must not meet the bf16 one."""
    summaries = precision_sweep(tmp_path, cache_dir, *launcher)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert summaries[0]["perplexity"] != summaries[1]["perplexity"]  # bf16 autocast computed the second


def test_export_on_cuda_without_a_gpu_is_refused_in_a_paragraph(monkeypatch, tmp_path):
    from llmft.export.exporter import ExportError, export_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExportError, match="--device cuda needs a CUDA GPU.*Leave --device out"):
        export_run(str(tmp_path), merge=True, device="cuda")
