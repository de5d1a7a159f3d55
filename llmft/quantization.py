"""Quantization's one identity: the bitsandbytes scheme (``nf4``, ``fp4``, ``int8``) that a ``quantization`` option
stands for. Training builds ``transformers.BitsAndBytesConfig`` objects from the options (``conf/quantization``);
the planner reads the same options by the names decoded here, so a new scheme is named in this file only."""

import sys
from typing import Any, Optional, Tuple

NF4, FP4, INT8 = "nf4", "fp4", "int8"
FOUR_BIT = (NF4, FP4)
QLORA = NF4  # the option the planner suggests when the weights do not fit (conf/quantization/nf4.yaml)
QLORA_SHARDED = "nf4-sharded"  # the same under FSDP: stored in the compute dtype, so that it is sharded


def is_quantized(model) -> bool:
    """True when bitsandbytes quantized the base weights (4-bit or 8-bit)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def scheme(node: Any) -> Tuple[Optional[str], bool]:
    """(``nf4``/``fp4``/``int8``/None, double quantization) of a ``quantization`` config node, a plain dict of its
    keys, or the ``BitsAndBytesConfig`` built from it; (None, False) for none."""
    if not node:
        return None, False
    get = node.get if hasattr(node, "get") else lambda key, default=None: getattr(node, key, default)
    if get("load_in_4bit"):
        return str(get("bnb_4bit_quant_type", FP4)), bool(get("bnb_4bit_use_double_quant", False))
    if get("load_in_8bit"):
        return INT8, False
    return None, False


def needs_bitsandbytes(cfg: Any) -> bool:
    """Whether a run (``cfg``, a composed configuration) uses bitsandbytes: it quantizes, or builds something of
    bitsandbytes (a paged or 8-bit optimizer)."""
    from llmft.config.targets import iter_targets

    return bool(cfg.get("quantization")) or any(str(node._target_).startswith("bitsandbytes")
                                                for _, node in iter_targets(cfg))


def keep_out_bitsandbytes(cfg: Any) -> None:
    """Keep bitsandbytes out of a process whose one run (``cfg``) does not use it (``needs_bitsandbytes``): peft
    imports bitsandbytes whenever it is installed, and bitsandbytes compiles its kernels with ``torch.compile`` as
    it loads (0.8 s of start-up and 48 MiB of resident memory here), for nothing such a run calls. Process-wide,
    since peft remembers what it found: not for a process that may run another configuration later (a sweep)."""
    if not needs_bitsandbytes(cfg):
        sys.modules.setdefault("bitsandbytes", None)  # Python's mark for a module that is not there
