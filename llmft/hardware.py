"""The precision that fits the machine: ``hardware.precision=auto`` resolved in one place.

bf16 on a CPU only pays where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere torch emulates it and a
step was measured 8x slower than fp32 (issue 10), so such CPUs get fp32. On CUDA, bf16 where the card supports it,
else fp16 (with loss scaling, which accelerate adds for fp16).
"""

import contextlib
import logging
import os
from pathlib import Path
from typing import FrozenSet, Optional

PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # torch's names
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}  # the names in /proc/cpuinfo and in torch.cpu.get_capabilities()
# oneDNN's instruction-set caps (``ONEDNN_MAX_CPU_ISA``) below its first one with bf16 dot products: torch's bf16
# matrix multiplications are oneDNN's, so under such a cap they are emulated (7.6x fp32's time, measured under AVX2)
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
ONEDNN_BELOW_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"}
CPUINFO = Path("/proc/cpuinfo")
log = logging.getLogger(__name__)


def cpu_features() -> FrozenSet[str]:
    """The CPU's feature names (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...).

    On Linux from ``/proc/cpuinfo``, so that ``llmft-plan`` resolves ``auto`` without importing torch; elsewhere
    from torch's cpuinfo (``torch.cpu.get_capabilities()``), which uses the same names.
    """
    if CPUINFO.exists():
        flags = [line.split(":", 1)[1] for line in CPUINFO.read_text(encoding="utf-8").splitlines()
                 if line.startswith("flags")]
        if flags:
            return frozenset(flags[0].split())
    import torch

    return frozenset(name for name, value in torch.cpu.get_capabilities().items() if value is True)


def cuda_bf16() -> Optional[bool]:
    """Whether the current CUDA device computes bf16; None without a CUDA device."""
    import torch

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None


def resolve_precision(precision: str, device: str) -> str:
    """``bf16``/``fp16``/``fp32`` for a profile's precision; ``auto`` is decided by this machine.

    Args:
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: ``cpu`` or ``cuda``.

    Returns:
        ``precision`` itself unless it is ``auto``; then ``bf16`` on a CPU with native bf16 (unless oneDNN is
        capped below it: ``onednn_capped``) and ``fp32`` on other CPUs; on CUDA ``bf16`` where supported, else
        ``fp16`` (``bf16`` when this machine has no CUDA device to ask, e.g. when planning for a GPU elsewhere).
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        return "fp16" if cuda_bf16() is False else "bf16"
    return "bf16" if NATIVE_BF16 & cpu_features() and not onednn_capped() else "fp32"


def onednn_capped() -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``) keeps oneDNN, and so torch's bf16
    matrix multiplications, below the instructions that compute bf16 natively, whatever the CPU has."""
    cap = next((os.environ[name] for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)), "")
    return cap.strip().lower() in ONEDNN_BELOW_BF16


RELEASE_THRESHOLD = 4 * 2**20  # bytes: blocks of this size and above are mapped apart and unmapped when freed
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def release_freed_memory(enabled: bool, device: str) -> bool:
    """With ``hardware.release_memory`` on a CPU: make glibc map every block of ``RELEASE_THRESHOLD`` bytes or more
    on its own and hand it back to the system when freed (``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc
    from raising the threshold as it does by default). Without it, the heap keeps what a step frees and, with the
    backward pass's allocations in between, grows well past the live tensors: in fp32 with gradient checkpointing
    4.1 GB against 2.1 GB (README, Throughput). The price is a page fault for every page of every large tensor, each
    time it is allocated. Returns whether the setting took (False off glibc, where it does nothing)."""
    if not enabled or device != "cpu":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, RELEASE_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        log.warning("hardware.release_memory=true does nothing here: the C library has no mallopt")
        return False


def run_device(device: str) -> str:
    """The device this process computes on: ``cpu``, or the CUDA device of its rank.

    ``accelerate launch`` and ``torchrun`` start one process per GPU and tell each its ``LOCAL_RANK``; a single
    process is rank 0. Loading, training and evaluation all place the model here, so rank 1 never loads onto GPU 0.
    """
    if device != "cuda":
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def use_device(device: str) -> str:
    """Make ``run_device(device)`` this process's current CUDA device, with TF32 matmuls on Ampere and newer.

    bitsandbytes and ``torch.cuda.max_memory_allocated`` act on the current device, so it is set before any
    weight loads. TF32 keeps fp32 matmuls (the fp32 parts of a mixed-precision step) on the tensor cores at a
    precision close to bf16's mantissa, which is what training in fp32 on these cards is expected to use.

    Returns:
        The device, as ``run_device`` names it.
    """
    target = run_device(device)
    if target == "cpu":
        return target
    import torch

    torch.cuda.set_device(target)
    if torch.cuda.get_device_capability(target)[0] >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return target


def load_device(device: str) -> str:
    """Where to re-load a finished run (``llmft-eval``, ``llmft-chat``): ``cuda`` if it trained there and this
    machine has a CUDA GPU, else ``cpu`` (a GPU run read on a laptop)."""
    if device != "cuda":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    log.info("This run trained on CUDA and this machine has no CUDA GPU: loading it on the CPU.")
    return "cpu"


def weights_dtype(precision: str, device: str) -> str:
    """The dtype name of a model's unquantized (frozen) weights: the precision that autocast computes in, so that
    no matrix multiplication casts its weight again on every call; fp32 for fp32, and for fp16 on a CPU.

    The trained parameters (the adapters) stay fp32 whatever this is (``llmft.adapters``). On a CPU with native
    bf16, bf16 weights made a W1 step 10% faster than fp32 weights under autocast and keep the residual stream, and
    so the saved activations, in 16 bits (``benchmarks/throughput.py``).
    """
    resolved = resolve_precision(precision, device)
    return "float32" if resolved == "fp16" and device != "cuda" else PRECISION_DTYPES[resolved]


def autocast(precision: str, device: str, now_on: Optional[str] = None):
    """The autocast that a profile's precision gives on ``device`` (none for fp32), so that evaluation computes as
    training did.

    Args:
        precision: the profile's ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: where the run trained (``cpu`` or ``cuda``): ``auto`` is resolved for it.
        now_on: where the model is now, when not there (a GPU run re-evaluated on a CPU).
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=now_on or device, dtype=getattr(torch, PRECISION_DTYPES[resolved]))


SHORT_ATTENTION_TOKENS = 192  # below this many tokens a bf16 CPU batch attends with torch's math kernel


def short_attention(precision: str, device: str, length: int) -> bool:
    """Whether a training batch of ``length`` tokens (a row's length, padding included) attends with torch's math
    kernel rather than its flash kernel: in bf16 on a CPU, below ``SHORT_ATTENTION_TOKENS``.

    Below 192 query tokens torch's CPU flash attention works in blocks of 32 queries, where its bf16 kernel is slow:
    forward and backward of 8 rows x 128 tokens x 9 heads took 15.8 ms against 9.9 ms with the math kernel (others
    paused); at 192 tokens the two are level, from 256 tokens flash is 1.5-3.5x faster, and in fp32 flash is faster
    at every length. The math kernel keeps the attention probabilities (``heads x length`` per token, which the
    planner counts), small at these lengths. The choice depends on the batch's shape alone, so a resumed run
    computes as the uninterrupted one did.
    """
    return device == "cpu" and precision == "bf16" and length < SHORT_ATTENTION_TOKENS


def attention_kernel(precision: str, device: str, length: int):
    """The context that a training forward pass of ``length`` tokens runs in: torch's math attention kernel where
    ``short_attention`` says so, else torch's own choice (``sdpa``; eager and flash-attn ignore it)."""
    if not short_attention(precision, device, length):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def check_attention(attn_implementation: str, device: str) -> None:
    """Refuse ``flash_attention_2`` where it cannot run: off a GPU, without the ``flash-attn`` package, or on a card
    older than Ampere (compute capability 8.0), which FlashAttention 2 does not support.

    Raises:
        ConfigError: with what to use instead.
    """
    if attn_implementation != "flash_attention_2":
        return
    from transformers.utils import is_flash_attn_2_available

    from llmft.errors import ConfigError

    why = None
    if run_device(device) == "cpu":
        why = "it runs only on a CUDA GPU, and this run is on the CPU"
    elif not is_flash_attn_2_available():
        why = "the flash-attn package is not installed (pip install flash-attn --no-build-isolation)"
    else:
        import torch

        major, minor = torch.cuda.get_device_capability(run_device(device))
        if major < 8:
            why = f"this GPU has compute capability {major}.{minor}, and FlashAttention 2 needs 8.0 (Ampere) or newer"
    if why:
        raise ConfigError(f"model.attn_implementation=flash_attention_2 cannot run here: {why}. Use "
                          "model.attn_implementation=sdpa (PyTorch's own fused attention, the default), which runs "
                          "everywhere.")
