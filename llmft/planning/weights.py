"""The terms that do not depend on the batch: base weights, LoRA weights, their gradients, optimizer states.

Each function returns a ``Term``: bytes, and one line saying how they were counted. Counting conventions:
parameters are counted as ``model.num_parameters()`` counts them (tied embeddings once); a "target" is one linear
layer of one decoder layer that peft wraps with LoRA.
"""

import math
from dataclasses import dataclass
from typing import List, Tuple

from llmft.planning.setup import Setup
from llmft.quantization import INT8

BNB_BLOCK = 64              # bitsandbytes 4-bit blocksize: one absmax per 64 weights
BNB_NESTED_BLOCK = 256      # double quantization: one fp32 absmax per 256 first-level absmax
OPTIM_8BIT_MIN_SIZE = 4096  # bitsandbytes keeps 32-bit states for tensors smaller than this (min_8bit_size)
OPTIM_8BIT_BLOCK = 256      # bitsandbytes 8-bit optimizers: one fp32 absmax per 256 values, per state
OPTIM_PAGED_MIN_SIZE = 100_000  # bitsandbytes pages only state tensors of at least this many values


@dataclass(frozen=True)
class Term:
    """One line of the plan.

    ``unallocated`` is the part of ``bytes`` that torch's CUDA caching allocator does not see (the CUDA context,
    paged optimizer states), so that the plan can be compared with ``torch.cuda.max_memory_allocated``.
    """

    key: str
    label: str
    bytes: float
    detail: str
    unallocated: float = 0.0


def quantized_bytes_per_weight(quantization: str, double_quant: bool) -> float:
    """Bytes per weight of a bitsandbytes-quantized linear layer, quantization constants included.

    - 4-bit (NF4, FP4): 0.5 byte per weight, plus one absmax per block of 64 weights: fp32 (4/64 = 0.0625 B)
      without double quantization; with it, an 8-bit absmax (1/64 B) plus one fp32 second-level absmax per 256
      blocks (4/16384 B): 0.515869 B per weight in all.
    - int8 (LLM.int8()): 1 byte per weight; the per-row fp32 scale is counted apart (``base_weights``).
    """
    if quantization == INT8:
        return 1.0
    if double_quant:
        return 0.5 + 1 / BNB_BLOCK + 4 / (BNB_BLOCK * BNB_NESTED_BLOCK)
    return 0.5 + 4 / BNB_BLOCK


def base_weights(s: Setup) -> Term:
    """The frozen base model.

    Unquantized: every parameter at ``weight_bytes`` (fp32 on the CPU; the profile's precision on a GPU).
    Quantized: the weights of every decoder linear layer at ``quantized_bytes_per_weight`` (int8 adds a fp32
    scale per output row), while embeddings, the output head (bitsandbytes never quantizes it), norms and biases
    stay unquantized and are held in fp32, because ``prepare_model_for_kbit_training`` upcasts them.
    """
    a = s.arch
    if not s.quantization:
        return Term("base_weights", "base weights", a.total_params() * s.weight_bytes,
                    f"{_m(a.total_params())} params x {s.weight_bytes} B{_tied(s)}")
    weights = sum(lin.in_features * lin.out_features for lin in a.linears()) * a.num_hidden_layers
    rest = a.total_params() - weights
    per = quantized_bytes_per_weight(s.quantization, s.double_quant)
    quant = f"{s.quantization}{' + double quant' if s.double_quant else ''}"
    return Term("base_weights", "base weights", linear_weight_bytes(s) + rest * 4,
                f"{_m(weights)} linear weights x {per:.4g} B ({quant}) + {_m(rest)} embeddings/head/norms x 4 B "
                f"(fp32 after prepare_model_for_kbit_training){_tied(s)}")


def linear_weight_bytes(s: Setup) -> float:
    """Bytes of the quantized weights of every decoder linear layer (int8: with a fp32 scale per output row);
    0 unquantized."""
    if not s.quantization:
        return 0.0
    a = s.arch
    weights = sum(lin.in_features * lin.out_features for lin in a.linears()) * a.num_hidden_layers
    scales = sum(lin.out_features for lin in a.linears()) * a.num_hidden_layers * 4 if s.quantization == INT8 else 0
    return weights * quantized_bytes_per_weight(s.quantization, s.double_quant) + scales


def trainable_tensors(s: Setup) -> List[Tuple[int, int, int]]:
    """``(values, bytes per value, count)`` of each kind of trainable tensor.

    Per target: ``lora_A`` (r x in) and ``lora_B`` (out x r); DoRA adds a magnitude vector (out). peft keeps
    adapter weights in fp32 even on a 16-bit base (``autocast_adapter_dtype``). ``bias='all'`` or ``'lora_only'``
    trains biases, ``modules_to_save`` trains full copies of those modules in the base's dtype.
    """
    layers, r = s.arch.num_hidden_layers, s.lora.r
    found: List[Tuple[int, int, int]] = []
    for lin in s.lora.targets(s.arch):
        found += [(r * lin.in_features, 4, layers), (lin.out_features * r, 4, layers)]
        if s.lora.use_dora:
            found.append((lin.out_features, 4, layers))
    biased = s.arch.linears() if s.lora.bias == "all" else s.lora.targets(s.arch) if s.lora.bias == "lora_only" else ()
    found += [(lin.out_features, s.weight_bytes, layers) for lin in biased if lin.bias]
    for name in s.lora.modules_to_save:
        if name.split(".")[-1] in ("lm_head", "embed_tokens"):
            found.append((s.arch.vocab_size * s.arch.hidden_size, s.weight_bytes, 1))
    return found


def lora_weights(s: Setup) -> Term:
    """The trainable adapter weights (and any trained biases or saved modules): values x bytes."""
    tensors = trainable_tensors(s)
    values = sum(n * c for n, _, c in tensors)
    names = [lin.name.split(".")[-1] for lin in s.lora.targets(s.arch)]
    dora = ", DoRA magnitudes" if s.lora.use_dora else ""
    return Term("lora_weights", "LoRA weights", sum(n * b * c for n, b, c in tensors),
                f"{_m(values)} params x 4 B (fp32): r={s.lora.r} on {', '.join(names) or 'nothing'}{dora} "
                f"x {s.arch.num_hidden_layers} layers")


def gradients(s: Setup) -> Term:
    """One gradient per trainable value, in the value's dtype; the frozen base has none."""
    tensors = trainable_tensors(s)
    return Term("gradients", "gradients", sum(n * b * c for n, b, c in tensors),
                f"{_m(sum(n * c for n, _, c in tensors))} trainable values x 4 B")


def optimizer_states(s: Setup) -> Term:
    """Optimizer states of the trainable tensors.

    AdamW (torch, fused or not): two states (exp_avg, exp_avg_sq) in the parameter's dtype: 8 B per fp32 value.
    bitsandbytes 8-bit (``AdamW8bit``, ``PagedAdamW8bit``): two uint8 states plus one fp32 absmax per 256 values
    each (2.03 B per value), but only for tensors of at least 4096 values; smaller ones keep 32-bit states.
    Paged variants put state tensors of at least 100,000 values in CUDA unified memory, which
    the caching allocator does not count and which can spill to host RAM under pressure (not on the CPU).
    Lion and SGD with momentum keep one state.
    """
    name = s.optimizer.rsplit(".", 1)[-1]
    kwargs = dict(s.optimizer_kwargs)
    states = 1 if ("Lion" in name or name == "SGD") else 2
    if name == "SGD" and not kwargs.get("momentum"):
        states = 0
    eight = "8bit" in name or kwargs.get("optim_bits") == 8
    paged = "Paged" in name and s.device == "cuda"
    total, outside = 0.0, 0.0
    for values, dtype_bytes, count in trainable_tensors(s):
        if eight and values >= kwargs.get("min_8bit_size", OPTIM_8BIT_MIN_SIZE):
            size = states * (values + math.ceil(values / OPTIM_8BIT_BLOCK) * 4)
        else:
            size = states * values * (4 if eight else dtype_bytes)
        total += size * count
        outside += size * count if paged and values >= OPTIM_PAGED_MIN_SIZE else 0
    kind = f"{name}: {states} state{'s' if states != 1 else ''} x {'8-bit' if eight else '32-bit'}"
    where = f"; {outside / 2**20:.0f} MiB paged (outside the allocator)" if outside else ""
    return Term("optimizer_states", "optimizer states", total, kind + where, unallocated=outside)


def _m(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def _tied(s: Setup) -> str:
    return "; head tied to the embeddings" if s.arch.tie_word_embeddings else ""
