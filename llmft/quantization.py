"""Quantization's one identity: the bitsandbytes scheme (``nf4``, ``fp4``, ``int8``) that a ``quantization`` option
stands for. Training builds ``transformers.BitsAndBytesConfig`` objects from the options (``conf/quantization``);
the planner reads the same options by the names decoded here, so a new scheme is named in this file only."""

from typing import Any, Optional, Tuple

NF4, FP4, INT8 = "nf4", "fp4", "int8"
FOUR_BIT = (NF4, FP4)
QLORA = NF4  # the option the planner suggests when the weights do not fit (conf/quantization/nf4.yaml)
QLORA_SHARDED = "nf4-sharded"  # the same under FSDP: stored in the compute dtype, so that it is sharded


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
