"""``llmft-train``'s preflight on the tiny model: refusal, auto-fit, a skipped GPU profile; ``llmft-plan`` as a user
runs it; the GPU budget emulation."""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from llmft.errors import ConfigError, MemoryBudgetError
from llmft.pipeline import run
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.setup import GIB
from tests.conftest import TINY, TINY_NO_EVAL


def between_micro_batches(make_cfg) -> float:
    """A budget (GiB) that the tiny run's micro-batch 4 exceeds and micro-batch 2 fits."""
    setup = setup_from_cfg(make_cfg(TINY_NO_EVAL))
    four, two = plan_memory(setup).total_bytes, plan_memory(replace(setup, micro_batch_size=2)).total_bytes
    return (four + two) / 2 / GIB


def summary_of(folder):
    return json.loads((folder / "summary.json").read_text())


def test_a_run_over_its_budget_stops_before_loading_with_the_plan_and_suggestions(make_cfg, tmp_path):
    cfg = make_cfg([*TINY_NO_EVAL, f"hardware.memory_budget_gb={between_micro_batches(make_cfg)}"])
    with pytest.raises(MemoryBudgetError, match="hardware.micro_batch_size=2 hardware.gradient_accumulation_steps=2 "
                                                r"\(.*\).*hardware.auto_fit=true"):
        run(cfg, tmp_path)
    summary = summary_of(tmp_path)
    assert summary["status"] == "failed" and "MemoryBudgetError" in summary["error"]
    assert summary["memory_plan"]["fits"] is False and summary["memory_plan"]["micro_batch_size"] == 4
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "adapter").exists()


def test_auto_fit_applies_the_first_suggestion_and_records_it(make_cfg, tmp_path):
    cfg = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=2", "hardware.auto_fit=true",
                    f"hardware.memory_budget_gb={between_micro_batches(make_cfg)}"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary_of(tmp_path)["auto_fit"] == summary["auto_fit"]
    assert summary["auto_fit"]["changed"] == {"hardware.micro_batch_size": {"from": 4, "to": 2},
                                              "hardware.gradient_accumulation_steps": {"from": 1, "to": 2}}
    assert summary["auto_fit"]["planned_mb_after"] < summary["auto_fit"]["planned_mb_before"]
    assert summary["memory_plan"]["fits"] and summary["memory_plan"]["micro_batch_size"] == 2
    assert cfg.hardware.micro_batch_size == 2 and cfg.hardware.gradient_accumulation_steps == 2
    assert summary["peak_memory_mb"] > 0 and isinstance(summary["memory_error_pct"], float)


def test_preflight_false_runs_an_over_budget_plan_anyway(make_cfg, tmp_path):
    cfg = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=1", "hardware.preflight=false",
                    f"hardware.memory_budget_gb={between_micro_batches(make_cfg)}"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["memory_plan"]["fits"] is False


def test_a_gpu_profile_without_cuda_is_skipped_with_its_plan(make_cfg, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="hardware=gtx1660-6gb needs CUDA"):
        run(make_cfg([*TINY, "hardware=gtx1660-6gb"]), tmp_path)
    summary = summary_of(tmp_path)
    assert summary["status"] == "skipped" and "needs CUDA" in summary["error"]
    plan = summary["memory_plan"]
    assert plan["budget_mb"] == 6 * 1024 and plan["fits"] and "terms_mb" in plan
    assert "memory_error_pct" not in summary and not (tmp_path / "adapter").exists()
    assert "peak_memory_mb" not in summary  # it never ran: a sweep row must not show the process's peak as its own


def llmft_plan(*args):
    exe = shutil.which("llmft-plan")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "llmft.plan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_llmft_plan_prints_every_term_and_the_verdict():
    result = llmft_plan("model=tiny", "hardware=cpu")
    assert result.returncode == 0, result.stderr
    for label in ("base weights", "LoRA weights", "gradients", "optimizer states", "activations",
                  "logits and loss", "framework overhead", "total"):
        assert f"  {label} " in result.stdout
    assert "fits (" in result.stdout and "of the 16 GiB budget" in result.stdout


def test_llmft_plan_of_a_run_that_does_not_fit_lists_changes_that_do_fit():
    # a 151,936-token vocabulary on a 6 GB card, its loss in chunks as large as a whole batch
    args = ["model=qwen2.5-0.5b", "hardware=gtx1660-6gb", "objective.chunk_tokens=8192"]
    result = llmft_plan(*args)
    assert result.returncode == 1
    assert "does not fit" in result.stdout and "To fit, any one of:" in result.stdout
    suggestions = result.stdout.split("To fit, any one of:\n")[1].splitlines()
    first = suggestions[0].split("  ->  ")[0].split()
    assert re.fullmatch(r"eval\.perplexity\.batch_size=\d", first[0])  # evaluation at batch 8 is the peak here
    assert llmft_plan(*args, *first).returncode == 0


def test_llmft_plan_sweeps_and_bad_overrides_read_like_llmft_train():
    sweep = llmft_plan("-m", "model=tiny", "lora.r=4,8", "hardware=cpu,gtx1660-6gb")
    assert sweep.returncode == 0 and len(sweep.stdout.splitlines()) == 4
    assert "model=tiny lora.r=8 hardware=gtx1660-6gb" in sweep.stdout
    bad = llmft_plan("lora.rr=8")
    assert bad.returncode == 2 and bad.stderr.startswith("llmft-plan: error: lora.rr is not a key of lora")
    assert "Traceback" not in bad.stderr


def test_llmft_plan_never_imports_torch_so_it_answers_in_a_second():
    code = ("import sys; from llmft.plan import grid, _plan\n"
            "for model in ('tiny', 'smollm2-135m', 'tinyllama-1.1b', 'qwen2.5-0.5b', 'phi-2', 'llama-3.2-1b'):\n"
            "    _plan([f'model={model}', 'quantization=nf4'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.gpu
def test_emulate_caps_cuda_memory_at_the_profile_budget(make_cfg, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    total = torch.cuda.get_device_properties(0).total_memory
    budget_gb = 2.0
    if total <= budget_gb * GIB:
        pytest.skip("this GPU is not larger than the emulated budget")
    cfg = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=1", "hardware=rtx4090-24gb", "hardware.micro_batch_size=2",
                    "hardware.emulate=true", f"hardware.memory_budget_gb={budget_gb}"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["emulated_memory_fraction"] == pytest.approx((budget_gb * GIB - 0.5 * GIB) / total, rel=1e-3)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(int(budget_gb * GIB), dtype=torch.uint8, device="cuda")
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
