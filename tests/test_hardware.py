"""hardware.precision=auto (llmft.hardware): the machine's features decide; only the detection is replaced here."""

import os

import pytest

from llmft import hardware
from llmft.config.resolvers import precision_to_dtype
from llmft.planning.setup import setup_from_cfg

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize("features, expected", [
    (AVX2_ONLY, "fp32"),
    (AVX2_ONLY | {"avx512f", "avx512_bf16"}, "bf16"),
    (AVX2_ONLY | {"amx_tile", "amx_bf16"}, "bf16"),
    (AVX2_ONLY | {"avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without its bf16 instructions
], ids=["avx2", "avx512-bf16", "amx", "avx512-no-bf16"])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, features, expected):
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    assert hardware.resolve_precision("auto", "cpu") == expected
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice stays
    assert precision_to_dtype("auto", "cpu") == {"fp32": "float32", "bf16": "bfloat16"}[expected]


@pytest.mark.parametrize("cap, expected", [
    ("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_BF16", "bf16"), ("AVX512_CORE_AMX", "bf16"),
    ("ALL", "bf16"), ("", "bf16"),
])
def test_auto_on_cpu_follows_a_onednn_cap(monkeypatch, cap, expected):
    """A CPU with AMX whose oneDNN is capped below bf16 (``ONEDNN_MAX_CPU_ISA``) computes bf16 by emulation."""
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.resolve_precision("auto", "cpu") == expected


def test_torch_agrees_that_a_onednn_cap_removes_bf16():
    """Under ``ONEDNN_MAX_CPU_ISA=AVX2`` torch's own check says oneDNN has no bf16, and ``auto`` picks fp32."""
    import platform
    import subprocess
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("oneDNN's AVX2 cap is an x86 setting")

    code = ("import torch; from llmft.hardware import resolve_precision; "
            "print(torch.ops.mkldnn._is_mkldnn_bf16_supported(), resolve_precision('auto', 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}).stdout.split()
    assert out == ["False", "fp32"]


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp16"), (None, "bf16")],
                         ids=["bf16-card", "gtx1660", "no-cuda-here"])
def test_auto_on_cuda_follows_the_card(monkeypatch, supported, expected):
    monkeypatch.setattr(hardware, "cuda_bf16", lambda: supported)
    assert hardware.resolve_precision("auto", "cuda") == expected


def test_this_machine_is_detected_as_torch_sees_it():
    torch = pytest.importorskip("torch")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu.get_capabilities().get("amx_bf16", False)
    assert hardware.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_cpu_profile_defaults_to_auto_everywhere_it_is_read(make_cfg, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY)
    cfg = make_cfg(["quantization=nf4"])
    assert (cfg.hardware.precision, cfg.quantization.bnb_4bit_compute_dtype) == ("fp32", "float32")
    assert setup_from_cfg(make_cfg(["hardware.precision=auto"])).precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY | {"amx_bf16"})
    assert make_cfg([]).hardware.precision == "bf16"
    assert setup_from_cfg(make_cfg(["hardware.precision=auto"])).precision == "bf16"


def _attention_kernels(tmp_path, length: int, checkpointing: bool = False) -> set:
    """The attention kernels the training loop's steps ran in bf16 on the CPU for records of ``length`` tokens, read
    from the autograd graph that the output projection's input hangs from."""
    import torch
    from peft import LoraConfig

    from llmft.adapters import apply_lora
    from llmft.data import pad_collate
    from llmft.loop import Hardware, TrainingLoop
    from llmft.models import build_tiny
    from llmft.recording import RunRecorder
    from tests.test_cuda_paths import ARCH

    loaded = build_tiny(arch=ARCH, cache_dir=str(tmp_path), dtype="bfloat16")
    tok = loaded.tokenizer
    model = apply_lora(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"), gradient_checkpointing=checkpointing)
    seen = set()

    def kernel(module, args):
        pending, depth = [(args[0].grad_fn, 0)], 0
        while pending:
            fn, depth = pending.pop()
            name = type(fn).__name__ if fn is not None else ""
            if "ScaledDotProduct" in name or name.startswith("Bmm"):
                seen.add("flash" if "ScaledDotProduct" in name else "math")
            elif fn is not None and depth < 6:
                pending += [(f, depth + 1) for f, _ in fn.next_functions]

    handle = model.get_base_model().model.layers[1].self_attn.o_proj.register_forward_pre_hook(kernel)
    data = [{"input_ids": list(range(5, 5 + length))} for _ in range(2)]
    TrainingLoop(learning_rate=1e-3, weight_decay=0.0, num_epochs=1, max_steps=1, warmup_ratio=0.0,
                 lr_scheduler="linear", max_grad_norm=1.0, log_every=1, eval_every=None, save_every=None,
                 save_each_epoch=False, keep_checkpoints=2).fit(
        model, data, lambda f: pad_collate(f, pad_token_id=tok.pad_token_id), batch_plan=lambda epoch: [[0, 1]],
        hardware=Hardware(precision="bf16"), optimizer=torch.optim.AdamW, recorder=RunRecorder(tmp_path / "run"))
    handle.remove()
    return seen


def test_short_bf16_batches_on_a_cpu_attend_with_the_math_kernel_long_ones_with_flash(tmp_path):
    assert hardware.short_attention("bf16", "cpu", 191) and not hardware.short_attention("bf16", "cpu", 192)
    assert not hardware.short_attention("fp32", "cpu", 64) and not hardware.short_attention("bf16", "cuda", 64)
    assert _attention_kernels(tmp_path / "short", 40) == {"math"}
    assert _attention_kernels(tmp_path / "long", hardware.SHORT_ATTENTION_TOKENS) == {"flash"}


def test_gradient_checkpointing_recomputes_a_short_batch_with_the_kernel_of_its_forward(tmp_path):
    """The recomputation runs in the backward pass: with torch's default kernel there, the checkpoint finds other
    tensors than the forward saved and stops the step (``CheckpointError``)."""
    assert _attention_kernels(tmp_path, 40, checkpointing=True) == {"math"}


RSS_AFTER_FREEING = """
import sys, torch
from llmft.hardware import release_freed_memory
print(release_freed_memory(sys.argv[1] == "on", "cpu"))
torch.ones(4 * 2**20).sum()  # a 16 MiB block freed: glibc raises its threshold and puts what follows in the heap
big, small = [], []
for _ in range(40):  # 8 MiB tensors with small ones kept between them, as a step's activations and its bookkeeping
    big.append(torch.ones(2 * 2**20))
    small.append(torch.ones(64 * 2**10 // 4))
del big
print(int(open("/proc/self/statm").read().split()[1]) * 4096)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from Linux's /proc")
def test_release_memory_hands_freed_blocks_back_to_the_system():
    import subprocess
    import sys

    def resident(setting: str):
        out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREEING, setting], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", int(out[1])

    (took_off, kept), (took_on, released) = resident("off"), resident("on")
    assert not took_off and took_on
    assert kept - released > 200 * 2**20  # of the 320 MiB freed, the heap kept most; released, they are gone
    assert not hardware.release_freed_memory(True, "cuda")  # a CPU setting
