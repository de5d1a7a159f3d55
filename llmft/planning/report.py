"""The plan as a table, the way ``llmft-plan`` and ``llmft-train``'s preflight print it."""

from typing import List, Sequence

from llmft.planning.fit import Suggestion
from llmft.planning.plan import MemoryPlan
from llmft.planning.setup import GIB


def size(n: float) -> str:
    """``1.23 GiB``, ``45.6 MiB`` or ``12 KiB``."""
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def describe(plan: MemoryPlan) -> str:
    """One line saying what was planned: model figures, precision, quantization, LoRA, batch, sequence, optimizer."""
    s = plan.setup
    quant = f"{s.quantization}{' + double quant' if s.double_quant else ''}" if s.quantization else "no quantization"
    targets = ", ".join(lin.name.split(".")[-1] for lin in s.lora.targets(s.arch))
    return (f"{s.arch.model_type} {s.arch.total_params() / 1e6:,.1f}M params, vocab {s.arch.vocab_size:,} "
            f"(figures: {s.arch.source})\n"
            f"hardware={s.profile}: {s.device}, {s.precision}, {quant}, LoRA r={s.lora.r} on {targets}"
            f"{' (DoRA)' if s.lora.use_dora else ''}; micro-batch {s.micro_batch_size}"
            f"{' pairs (2 rows each)' if s.rows_per_example == 2 else ''} x "
            f"{s.gradient_accumulation_steps} accumulation, sequence {s.seq_len}, {s.attn_implementation}, "
            f"{'gradient checkpointing' if s.gradient_checkpointing else 'no checkpointing'}, "
            f"{s.optimizer.rsplit('.', 1)[-1]}"
            + (f"\nper device: distributed={s.distributed} over {s.processes} processes, one device each"
               if s.processes > 1 else ""))


def format_plan(plan: MemoryPlan, suggestions: Sequence[Suggestion] = ()) -> str:
    """The plan's terms as a table, the total against the budget and the verdict, then any suggestions."""
    rows = [(t.label, size(t.bytes), t.detail) for t in plan.terms]
    rows.append(("total", size(plan.total_bytes), plan.verdict))
    width = max(len(r[0]) for r in rows)
    lines = [describe(plan), ""] + [f"  {label:<{width}}  {amount:>10}  {how}" for label, amount, how in rows]
    if plan.setup.device == "cuda":
        lines.append(f"  ({size(plan.allocated_bytes)} of it through torch's allocator: what "
                     "torch.cuda.max_memory_allocated should report)")
    lines += _suggestions(suggestions, plan)
    return "\n".join(lines)


def _suggestions(suggestions: Sequence[Suggestion], plan: MemoryPlan) -> List[str]:
    if plan.fits:
        return []
    if not suggestions:
        return ["", "Nothing fits this budget: no micro-batch, checkpointing, NF4 or sequence length brings it "
                    "within; use a profile with more memory or a smaller model."]
    lines = ["", "To fit, any one of:"]
    for s in suggestions:
        lines.append(f"  {' '.join(s.overrides)}  ->  {size(s.plan.total_bytes)}: {s.why}")
    return lines
