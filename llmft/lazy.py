"""A package whose names load on first use (PEP 562), so that a command importing one of its modules does not pay
for the libraries of the others (``llmft.data``, ``llmft.evaluation``)."""

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_names(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of ``package``: each name of ``exports`` from the module it maps to, imported on first use."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


def keep_out_bitsandbytes(cfg: Any) -> None:
    """Keep bitsandbytes out of a process whose one run (``cfg``) quantizes nothing and builds nothing of it
    (a paged 8-bit optimizer): peft imports bitsandbytes whenever it is installed, and bitsandbytes compiles its
    kernels with ``torch.compile`` as it loads (0.8 s here), for nothing such a run calls. Process-wide, since peft
    remembers what it found: not for a process that may run another configuration later (a sweep's jobs)."""
    from omegaconf import OmegaConf

    if cfg.get("quantization") or "bitsandbytes" in OmegaConf.to_yaml(cfg):
        return
    sys.modules.setdefault("bitsandbytes", None)  # Python's mark for a module that is not there
