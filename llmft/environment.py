"""What a run ran on: package versions, llmft's git commit, the CPU's capabilities and the GPU.

``summary.json`` records it under ``environment`` so that a result can be reproduced and a broken install
diagnosed; ``llmft-doctor`` prints the same.
"""

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "gguf", "llmft")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "f16c", "neon", "asimd")  # what kernels pick by
ROOT = Path(__file__).resolve().parents[1]


def describe_environment() -> Dict[str, Any]:
    """Python and package versions, llmft's commit (in a checkout), the platform, the CPU and the GPU."""
    return {"python": platform.python_version(), "packages": package_versions(), "llmft_commit": git_commit(),
            "platform": platform.platform(), "cpu": cpu(), "gpu": gpu()}


def package_versions() -> Dict[str, Optional[str]]:
    """The installed version of each of ``PACKAGES`` (None: not installed), read without importing them."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> Optional[str]:
    """The commit of the checkout llmft runs from, with ``+dirty`` when tracked files differ from it; None when
    llmft is not run from a git checkout (an installed wheel) or git is absent."""
    if not (ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu() -> Dict[str, Any]:
    """The CPU's model, logical cores, the SIMD flags kernels choose by, and the capability torch dispatches to."""
    import os

    import torch

    info = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "flags": _cpu_flags()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def _cpu_flags() -> List[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    return [f for f in CPU_FLAGS if f in flags]


def gpu() -> Optional[Dict[str, Any]]:
    """The first CUDA GPU (name, compute capability, memory, count) and torch's CUDA version; None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        props = torch.cuda.get_device_properties(0)
    except RuntimeError as exc:  # a broken driver: what the record (and llmft-doctor) is for
        return {"error": str(exc), "cuda": torch.version.cuda}
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}
