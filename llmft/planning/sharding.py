"""Several processes: what each device holds under ``distributed=ddp``, ``fsdp`` and ``fsdp-offload``.

The plan of a run on N processes is the plan of one device: the micro-batch is per process, so activations and
logits are as on one process. ``ddp`` holds the whole model, and its reducer's gradient buckets. ``fsdp``
(accelerate's FSDP2 plugin) divides what it shards by N: every decoder layer is a group (its frozen weights, its
adapters, their gradients and optimizer states), and the tail group (embeddings, final norm, output head) is
sharded between steps but gathered whole from its forward to the end of its backward
(``reshard_after_forward=False``, as accelerate builds it). 4-bit weights in integer storage (``nf4``) are left
out of the shards, whole on every process; ``nf4-sharded`` stores them in a float dtype, and they are sharded.
During the step, the layers being computed are gathered whole (``IN_FLIGHT_LAYERS``). ``fsdp-offload`` keeps the
shards in host memory: on a GPU only the gathered weights and the step's tensors are on the device.

Before accelerate shards the model (in the training loop), the main process holds it whole on the CPU and the
others hold none of it (``cpu_ram_efficient_loading``; with QLoRA, or with that option off, every process loads it
whole onto its device): that phase is planned too, and can be the peak. The base model is evaluated after
sharding, on the shards (the plan's evaluation term).
"""

from typing import List

from llmft.planning.setup import Setup
from llmft.planning.weights import Term, base_weights, linear_weight_bytes

IN_FLIGHT_LAYERS = 2  # a layer gathered while the previous one computes (GPU prefetch; on gloo, the all-gather
#                       buffer beside the layer's unsharded parameters): an estimate, not measured apart


def root_params(s: Setup) -> int:
    """Parameters of accelerate's tail group: embeddings, output head (when untied) and the final norm."""
    return s.arch.embedding_params() + (2 if s.arch.family == "phi" else 1) * s.arch.hidden_size


def per_device(s: Setup, fixed: List[Term]) -> List[Term]:
    """The fixed terms (base weights, LoRA weights, gradients, optimizer states) as one device holds them, and the
    term that the way of spreading adds: DDP's gradient buckets, or FSDP's gathered weights."""
    if s.distributed == "ddp":
        grads = next(t for t in fixed if t.key == "gradients")
        return fixed + [Term("buckets", "DDP gradient buckets", grads.bytes,
                             f"DDP's reducer copies the gradients into flat buckets for the all-reduce "
                             f"(gradient_as_bucket_view off); the whole model on each of {s.processes} processes")]
    n, offload = s.processes, s.distributed == "fsdp-offload" and s.device == "cuda"
    root = root_params(s) * _root_bytes(s)
    layers = base_weights(s).bytes - root
    whole = linear_weight_bytes(s) if _integer_storage(s) else 0.0  # left out of the shards by accelerate
    terms = []
    for t in fixed:
        if t.key == "base_weights":
            held = (layers - whole + root) / n + whole
            detail = (f"1/{n} of the decoder layers and the tail group (embeddings, head, final norm)"
                      + (f"; the {s.quantization} weights in integer storage whole on every process ({_mib(whole)})"
                         if whole else "") + f"; whole: {_mib(t.bytes)}")
        else:
            held, detail = t.bytes / n, f"1/{n} of {_mib(t.bytes)}: {t.detail}"
        if offload:
            terms.append(Term(t.key, t.label, 0.0, f"in host memory (fsdp-offload): {_mib(held)}"))
        else:
            terms.append(Term(t.key, t.label, held, detail, unallocated=t.unallocated / n))
    adapters = next(t for t in fixed if t.key == "lora_weights").bytes
    layer = (layers + adapters) / s.arch.num_hidden_layers
    flight = s.arch.num_hidden_layers if not s.reshard_after_forward else min(IN_FLIGHT_LAYERS,
                                                                                s.arch.num_hidden_layers)
    terms.append(Term("gathered", "gathered weights", root + flight * layer,
                      f"the tail group whole during the step ({_mib(root)}) + {flight} decoder layer(s) gathered "
                      f"at a time ({_mib(layer)} each)"))
    return terms


def before_sharding(s: Setup, whole_fixed: float, shards: float, peak: float) -> Term:
    """FSDP: the whole model before accelerate shards it (``whole_fixed``: base weights and adapters).

    With ``cpu_ram_efficient_loading`` and no quantization only the main process holds it, on the CPU, while its
    shards (``shards``) are made from it and broadcast: on a GPU that is host memory, not the device's; on the CPU
    it is the device, and the plan (that of the largest process) counts it. The other processes build the model on
    the meta device and hold only their shards. Otherwise every process loads it whole onto its device.
    """
    if main_only(s) and s.device == "cuda":
        return Term("unsharded", "before sharding", 0.0,
                    f"the main process holds the whole model ({_mib(whole_fixed)}) in host memory, not on its device; "
                    "the others build it on the meta device; each device receives only its shards")
    before = whole_fixed + (shards if main_only(s) else 0.0)
    excess = max(0.0, before - peak)
    who = (f"the main process holds the whole model ({_mib(whole_fixed)}) beside the shards made from it "
           f"({_mib(shards)}), the others none of it (meta device)" if main_only(s) else
           f"each process loads the whole model ({_mib(whole_fixed)}) onto its device"
           + (" (accelerate's loading from the main process leaves 4-bit weights out)" if s.quantization else ""))
    return Term("unsharded", "before sharding", excess,
                who + " before the loop shards it: " + ("peaks above the sharded step by this" if excess
                                                       else "within the sharded step's peak"))


def main_only(s: Setup) -> bool:
    """Whether only the main process loads the weights (``llmft.distributed.loads_on_main_only``)."""
    return s.main_loads and not s.quantization


def _integer_storage(s: Setup) -> bool:
    return bool(s.quantization) and not s.quant_storage_float


def _root_bytes(s: Setup) -> int:
    return 4 if s.quantization else s.weight_bytes  # prepare_model_for_kbit_training upcasts them to fp32


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"
