"""The plan: every term of a run's peak memory, the total against the hardware profile's budget, and a verdict."""

from dataclasses import dataclass
from typing import Any, Dict, List

from llmft.planning import activations as act
from llmft.planning import sharding
from llmft.planning.setup import GIB, Setup
from llmft.planning.weights import Term, base_weights, gradients, lora_weights, optimizer_states

CUDA_CONTEXT_BYTES = 0.5 * GIB   # CUDA context, cuBLAS/cuDNN handles, torch and bitsandbytes kernels (estimate)
CUDA_ALLOCATOR_SLACK = 0.10      # the caching allocator reserves about this much above what it has allocated
CPU_BASELINE_BYTES = 0.6 * GIB   # resident memory of a training process before its first step (measured: README)
BITSANDBYTES_BYTES = 48 * 2**20   # of it, bitsandbytes' (measured: a process that keeps it out, llmft.quantization)
CPU_RETENTION = 1.00             # the backward pass's transients and the freed memory glibc keeps (fitted: README)
CPU_STARTUP_COPY = 1.0           # several processes: the whole weights' start-up copy, freed, stays resident (README)


@dataclass
class MemoryPlan:
    """The predicted peak of one run, term by term.

    The peak is that of the training step or of the no-grad evaluation pass, whichever is larger, plus the
    framework's overhead; ``terms`` sum to ``total_bytes``.
    """

    setup: Setup
    terms: List[Term]

    @property
    def total_bytes(self) -> float:
        """The predicted peak of the whole process on its device."""
        return sum(t.bytes for t in self.terms)

    @property
    def allocated_bytes(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` should report: the total less what the allocator never sees."""
        return sum(t.bytes - t.unallocated for t in self.terms if t.key != "overhead")

    @property
    def predicted_peak_bytes(self) -> float:
        """The figure a run measures: peak resident memory on the CPU, max allocated on a GPU."""
        return self.allocated_bytes if self.setup.device == "cuda" else self.total_bytes

    @property
    def budget_bytes(self) -> float:
        """The hardware profile's ``memory_budget_gb``, read as GiB (a 6 GB card holds 6 GiB)."""
        return self.setup.budget_gb * GIB

    @property
    def fits(self) -> bool:
        """True when the predicted peak is within the budget."""
        return self.total_bytes <= self.budget_bytes

    @property
    def verdict(self) -> str:
        """``fits`` or ``does not fit``, with the share of the budget."""
        share = 100 * self.total_bytes / self.budget_bytes
        return f"{'fits' if self.fits else 'does not fit'} ({share:.0f}% of the {self.setup.budget_gb:g} GiB budget)"

    def to_dict(self) -> Dict[str, Any]:
        """The plan in MiB, for ``summary.json``."""
        mib = 2**20
        return {"terms_mb": {t.key: round(t.bytes / mib, 1) for t in self.terms},
                "total_mb": round(self.total_bytes / mib, 1), "budget_mb": round(self.budget_bytes / mib, 1),
                "predicted_peak_mb": round(self.predicted_peak_bytes / mib, 1), "fits": self.fits,
                "verdict": self.verdict, "sequence_length": self.setup.seq_len,
                "micro_batch_size": self.setup.micro_batch_size, "figures_from": self.setup.arch.source,
                "processes": self.setup.processes, "distributed": self.setup.distributed}


def plan_memory(s: Setup) -> MemoryPlan:
    """Plan the peak memory of the run ``s`` describes (see each term's docstring for its formula)."""
    whole = [base_weights(s), lora_weights(s), gradients(s), optimizer_states(s)]
    fixed = whole if s.distributed == "none" else sharding.per_device(s, whole)
    activations, logits = _step_terms(s)
    train = sum(t.bytes for t in fixed) + activations.bytes + logits.bytes
    evaluation = sum(t.bytes for t in fixed if t.key not in ("gradients", "buckets")) + _eval_activations(s)
    terms = fixed + [activations, logits]
    if evaluation > train:
        terms.append(Term("evaluation", "evaluation excess", evaluation - train,
                          f"the no-grad perplexity pass ({s.eval_batch} x {s.seq_len} tokens, "
                          f"{_eval_activations(s) / (s.eval_batch * s.seq_len) / 1024:.0f} KiB/token"
                          f"{_chunk_note(s)}) peaks above the training step by this"))
    if s.reference_pass:
        terms.append(_reference(s, sum(t.bytes for t in fixed), max(train, evaluation)))
    if s.distributed in ("fsdp", "fsdp-offload"):
        terms.append(sharding.before_sharding(s, whole[0].bytes + whole[1].bytes,
                                              next(t.bytes for t in fixed if t.key == "base_weights"),
                                              sum(t.bytes for t in terms)))
    terms.append(_overhead(s, terms))
    return MemoryPlan(setup=s, terms=terms)


def _reference(s: Setup, fixed: float, peak: float) -> Term:
    """DPO's reference pass: a no-grad forward of the micro-batch with the adapter disabled, before the policy's
    forward and freed before it; the same weights, so it adds only where its transients peak above the rest."""
    transient = act.eval_bytes(s, s.tokens)
    excess = max(0.0, fixed + transient - peak)
    return Term("reference", "reference pass", excess,
                f"no-grad forward, adapter disabled ({s.rows} x {s.seq_len} tokens, "
                f"{transient / 2**20:.0f} MiB of transients): "
                + ("peaks above the training step by this" if excess else "within the training step's peak"))


def _step_terms(s: Setup):
    """(activations, logits and loss) of a training step, summing to the step's peak above the fixed terms."""
    d, tokens, arch = act.dtypes(s), s.tokens, s.arch
    rows = act.logit_rows(s, tokens)
    logits_stage = act.logits_per_token(s) * rows + act.head_cast_bytes(s) + act.chunked_hidden_bytes(s, tokens)
    parts = act.activations_per_token(s)
    shared = _dora_transient(s) + act.weight_copies(s)
    pairs = " (2 rows a pair: chosen and rejected)" if s.rows_per_example == 2 else ""
    where = f"{s.rows} x {s.seq_len} tokens{pairs} x {arch.num_hidden_layers} layers"
    if not s.gradient_checkpointing:
        per_token = sum(parts.values())
        detail = (f"{where} x {per_token / arch.num_hidden_layers / 1024:.1f} KiB/token/layer (" +
                  ", ".join(f"{k} {v / arch.num_hidden_layers / 1024:.1f}" for k, v in parts.items()) +
                  f"); {s.attn_implementation}, no checkpointing")
        activations = Term("activations", "activations", per_token * tokens + shared, detail)
    else:
        kept = arch.num_hidden_layers * d.residual * arch.hidden_size * tokens
        layer = sum(act.layer_saved(s, d).values()) + 2 * d.residual * arch.hidden_size
        final = 4 * arch.hidden_size + (8 if arch.family == "phi" else 4)
        recompute = d.logits * arch.vocab_size * rows + layer * tokens
        extra = max(0.0, recompute - logits_stage - final * tokens)
        detail = (f"checkpointing: {arch.num_hidden_layers} layer inputs x {s.rows} x {s.seq_len} x "
                  f"{d.residual * arch.hidden_size / 1024:.1f} KiB, and one layer recomputed in the backward pass "
                  f"({layer * tokens / 2**20:.0f} MiB{', inside the loss peak' if extra == 0 else ''}); "
                  f"{s.attn_implementation}")
        activations = Term("activations", "activations", kept + final * tokens + extra + shared, detail)
    cast = act.head_cast_bytes(s)
    logits = Term("logits", "logits and loss", logits_stage,
                  f"{rows:,} tokens x {arch.vocab_size:,} vocab x {act.logits_per_token(s) / arch.vocab_size:.0f} B"
                  + (f" (logits {d.logits} B{'' if d.logits == 4 else ', an fp32 copy'}; the head's gradient by hand)"
                     if s.head_by_hand else f" (logits {d.logits} B, fp32 log-softmax and two fp32 gradients)")
                  + _chunk_note(s)
                  + (f" + a {cast / 2**20:.0f} MiB 16-bit copy of the fp32 output head" if cast else ""))
    return activations, logits


def _dora_transient(s: Setup) -> float:
    """DoRA's weight norm, per call: an identity (in x in) and two dense weights (out x in), fp32, transient."""
    if not s.lora.use_dora:
        return 0.0
    return max((lin.in_features ** 2 + 2 * lin.in_features * lin.out_features) * 4
               for lin in s.lora.targets(s.arch)) if s.lora.targets(s.arch) else 0.0


def _eval_activations(s: Setup) -> float:
    return act.eval_bytes(s, s.eval_batch * s.seq_len)


def _chunk_note(s: Setup) -> str:
    return f"; chunked loss, {s.loss_chunk_tokens:,} tokens a chunk" if s.loss_chunk_tokens else ""


def _overhead(s: Setup, terms: List[Term]) -> Term:
    """The framework's own memory.

    GPU: the CUDA context (``CUDA_CONTEXT_BYTES``, outside torch's allocator) and the caching allocator's
    reserve above its allocations (``CUDA_ALLOCATOR_SLACK`` of the peak). CPU: the resident memory of a process
    that has imported torch, transformers, peft, accelerate and datasets and holds the tokenizer and the data
    (``CPU_BASELINE_BYTES``, less ``BITSANDBYTES_BYTES`` for a run that keeps bitsandbytes out), plus what the
    backward pass allocates while the saved tensors are alive and what glibc keeps resident of the step's freed
    temporaries (the activations and logits of one step are freed and allocated again in the next, and the heap
    holds on to them): ``CPU_RETENTION`` of activations and logits, fitted on measured runs. With several
    processes, one copy of the whole base weights made at start-up and freed
    stays resident too (``CPU_STARTUP_COPY``): FSDP's whole weights once sharded (with ``cpu_ram_efficient_loading``
    the main process's, and the others' buffers that receive each whole parameter from it), DDP's broadcast of the parameters
    from the main process.
    """
    peak = sum(t.bytes for t in terms)
    if s.device == "cuda":
        slack = CUDA_ALLOCATOR_SLACK * peak
        return Term("overhead", "framework overhead", CUDA_CONTEXT_BYTES + slack,
                    f"CUDA context {CUDA_CONTEXT_BYTES / GIB:.1f} GiB + allocator reserve "
                    f"{100 * CUDA_ALLOCATOR_SLACK:.0f}% of the peak", unallocated=CUDA_CONTEXT_BYTES + slack)
    dynamic = sum(t.bytes for t in terms if t.key in ("activations", "logits", "evaluation", "reference"))
    startup = CPU_STARTUP_COPY * base_weights(s).bytes if s.processes > 1 else 0.0
    baseline = CPU_BASELINE_BYTES - (0 if s.bitsandbytes else BITSANDBYTES_BYTES)
    return Term("overhead", "framework overhead", baseline + CPU_RETENTION * dynamic + startup,
                f"CPU process {baseline / GIB:.2f} GiB (Python, torch, transformers, "
                f"{'bitsandbytes, ' if s.bitsandbytes else ''}tokenizer, data) + "
                f"{100 * CPU_RETENTION:.0f}% of activations and logits (the backward pass's transients, what the "
                "heap keeps)"
                + (f" + the whole base weights' start-up copy, freed and kept resident ({startup / 2**20:.0f} MiB: "
                   + ("DDP's broadcast of the parameters)" if s.distributed == "ddp" else
                      "the whole weights the main process shards from; the others' buffers they arrive in)"
                      if sharding.main_only(s) else
                      "the weights each process loads before sharding)") if startup else ""))
