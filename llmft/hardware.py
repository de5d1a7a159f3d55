"""The precision that fits the machine: ``hardware.precision=auto`` resolved in one place.

bf16 on a CPU only pays where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere torch emulates it and a
step was measured 8x slower than fp32 (issue 10), so such CPUs get fp32. On CUDA, bf16 where the card supports it,
else fp16 (with loss scaling, which accelerate adds for fp16).
"""

from pathlib import Path
from typing import FrozenSet, Optional

NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}  # the names in /proc/cpuinfo and in torch.cpu.get_capabilities()
CPUINFO = Path("/proc/cpuinfo")


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
        ``precision`` itself unless it is ``auto``; then ``bf16`` on a CPU with native bf16 and ``fp32`` on other
        CPUs; on CUDA ``bf16`` where supported, else ``fp16`` (``bf16`` when this machine has no CUDA device to ask,
        e.g. when planning for a GPU elsewhere).
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        return "fp16" if cuda_bf16() is False else "bf16"
    return "bf16" if NATIVE_BF16 & cpu_features() else "fp32"
