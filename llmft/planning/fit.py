"""Concrete changes that make an over-budget run fit, each with the plan it would have.

In order: a smaller perplexity batch, when the no-grad evaluation is the peak and training alone fits; the
largest micro-batch that fits, with gradient accumulation raised to keep the effective batch; gradient
checkpointing; NF4 base weights (QLoRA; under FSDP ``nf4-sharded``, which FSDP shards); a shorter sequence
length. Each is tried alone (with the largest micro-batch, and evaluation batch, that then fit); when none fits
alone, they are combined in that order.
"""

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from llmft.planning.plan import MemoryPlan, plan_memory
from llmft.planning.setup import Setup
from llmft.quantization import FOUR_BIT, NF4, QLORA, QLORA_SHARDED

MIN_SEQ_LEN = 64
WHY = {"hardware.gradient_checkpointing": "recompute activations in the backward pass (steps about 30% slower)",
       "quantization": "NF4 base weights with double quantization (QLoRA)"}


@dataclass(frozen=True)
class Suggestion:
    """A change to the run, as config keys and values, and its plan."""

    changes: Dict[str, Any]   # dotted key -> new value; "quantization" -> "nf4" names the group option
    why: str
    plan: MemoryPlan

    @property
    def overrides(self) -> List[str]:
        """The change as ``llmft-train`` overrides."""
        return [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                for key, value in self.changes.items()]


def suggest(s: Setup) -> List[Suggestion]:
    """Changes that bring the plan of ``s`` within its budget, most preferable first (empty when none does)."""
    qlora = QLORA_SHARDED if s.distributed in ("fsdp", "fsdp-offload") else QLORA
    steps = [(key, value) for key, value in (("hardware.gradient_checkpointing", True), ("quantization", qlora))
             if not (key == "quantization" and s.quantization in FOUR_BIT) and
             not (key == "hardware.gradient_checkpointing" and s.gradient_checkpointing)]
    found = [_with_micro_batch(s, s, {})]
    found += [_with_micro_batch(s, _apply(s, {key: value}), {key: value}) for key, value in steps]
    found.append(_shorter(s, s, {}))
    found = [f for f in found if f is not None]
    if not found:  # nothing fits alone: combine
        changes: Dict[str, Any] = {}
        for key, value in steps:
            changes[key] = value
            combined = _apply(s, changes)
            hit = _with_micro_batch(s, combined, dict(changes)) or _shorter(s, combined, dict(changes))
            if hit is not None:
                return [hit]
    return found


def _apply(s: Setup, changes: Dict[str, Any]) -> Setup:
    if "quantization" in changes:
        s = replace(s, quantization=NF4, double_quant=True,
                    quant_storage_float=changes["quantization"] == QLORA_SHARDED)
    if "hardware.gradient_checkpointing" in changes:
        s = replace(s, gradient_checkpointing=changes["hardware.gradient_checkpointing"])
    return s


def _settle(s: Setup) -> Optional[Tuple[Setup, MemoryPlan]]:
    """``s`` if it fits, else ``s`` with the largest perplexity batch that makes it fit, else None."""
    plan = plan_memory(s)
    if plan.fits:
        return s, plan
    if not s.eval_batch_key or "evaluation" not in {t.key for t in plan.terms}:
        return None
    for batch in range(s.eval_batch_size - 1, 0, -1):
        trial = replace(s, eval_batch_size=batch)
        plan = plan_memory(trial)
        if plan.fits:
            return trial, plan
    return None


def _suggestion(original: Setup, fitted: Setup, plan: MemoryPlan, changes: Dict[str, Any]) -> Suggestion:
    """The changes from ``original`` to ``fitted``, with the reasons."""
    changes, why = dict(changes), [WHY[key] for key in changes if key in WHY]
    if fitted.eval_batch_size != original.eval_batch_size:
        changes[original.eval_batch_key] = fitted.eval_batch_size
        why.append(f"the no-grad perplexity pass at batch {fitted.eval_batch_size} (it was the peak)")
    if fitted.micro_batch_size != original.micro_batch_size:
        changes["hardware.micro_batch_size"] = fitted.micro_batch_size
        changes["hardware.gradient_accumulation_steps"] = fitted.gradient_accumulation_steps
        why.append(f"micro-batch {fitted.micro_batch_size} x {fitted.gradient_accumulation_steps} keeps the "
                   f"effective batch of {original.micro_batch_size * original.gradient_accumulation_steps}")
    if fitted.seq_len != original.seq_len:
        changes["data.max_seq_length"] = fitted.seq_len
        why.append("shorter sequences (longer records are truncated)")
    return Suggestion(changes=changes, why="; ".join(why), plan=plan)


def _with_micro_batch(original: Setup, s: Setup, changes: Dict[str, Any]) -> Optional[Suggestion]:
    """``s`` as it is if it fits, else with the largest micro-batch dividing the effective batch that fits."""
    effective = original.micro_batch_size * original.gradient_accumulation_steps
    for m in [m for m in range(s.micro_batch_size, 0, -1) if effective % m == 0 or m == s.micro_batch_size]:
        settled = _settle(replace(s, micro_batch_size=m, gradient_accumulation_steps=max(1, math.ceil(effective / m))))
        if settled is not None:
            return _suggestion(original, *settled, changes)
    return None


def _shorter(original: Setup, s: Setup, changes: Dict[str, Any]) -> Optional[Suggestion]:
    """The longest ``data.max_seq_length`` (a multiple of 64) below the current one that fits, if any."""
    lo, hi, best = MIN_SEQ_LEN // 64, (original.seq_len - 1) // 64, None
    while lo <= hi:  # memory grows with the sequence length: bisect
        mid = (lo + hi) // 2
        settled = _settle(replace(s, seq_len=mid * 64))
        if settled is not None:
            best, lo = settled, mid + 1
        else:
            hi = mid - 1
    return _suggestion(original, *best, changes) if best else None
