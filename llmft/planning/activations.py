"""What a training step keeps for the backward pass: activations per decoder layer, logits and loss.

The counts follow what autograd saves (``torch.autograd.graph.saved_tensors_hooks`` sees exactly these tensors;
tests/test_planning_activations.py checks the formulas against it), per token of a micro-batch of ``b`` sequences
of ``S`` tokens, in bytes. ``h`` hidden size, ``I`` intermediate size, ``n``/``k`` query/key-value heads of
``d`` dimensions, ``r`` the LoRA rank, ``V`` the vocabulary. Element sizes (``Dtypes``): ``c`` what autocast
computes in (2 for bf16/fp16, 4 without autocast), ``w`` the unquantized weights (``Setup.weight_bytes``).

Frozen base weights save no inputs: a linear layer whose weight needs no gradient keeps only its weight for the
backward pass. So the activations are what norms, attention, activation functions and the LoRA branches save.
"""

from dataclasses import dataclass
from typing import Dict, Iterable

from llmft.hardware import short_attention
from llmft.planning.arch import Linear
from llmft.planning.setup import Setup
from llmft.planning.weights import trainable_tensors


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of the tensors a step saves, for a setup.

    - ``residual``: the residual stream, the embeddings' dtype: ``w``.
    - ``linear``: outputs of the base linear layers: ``c`` under autocast; a bitsandbytes layer casts its output
      back to its input's dtype, so with quantization they are the residual's (fp32).
    - ``attention``: what scaled-dot-product attention saves: ``c`` (autocast casts its inputs), else fp32.
    - ``lora_in``: what ``lora_A`` saves of its input: ``c`` under autocast, else fp32 (peft's adapters are fp32).
    - ``logits``: the output head's output: ``c`` under autocast, else ``w``.
    """

    residual: int
    linear: int
    attention: int
    lora_in: int
    logits: int


def dtypes(s: Setup) -> Dtypes:
    """The element sizes of ``s`` (see ``Dtypes``)."""
    c, w = s.compute_bytes, s.weight_bytes
    linear = w if s.quantization else (c if s.autocast else w)
    return Dtypes(residual=w, linear=linear, attention=c if s.autocast else w, lora_in=c if s.autocast else 4,
                  logits=c if s.autocast else w)


def lora_saved(s: Setup, d: Dtypes, targets: Iterable[Linear], input_grad: bool, input_bytes: int,
               saved_already: bool = False, rebuilt: bool = False) -> float:
    """Bytes per token that LoRA branches fed by one tensor (of ``input_bytes`` per element) save.

    Fused (``Setup.fused``): each target keeps its input in the compute dtype (the tensor itself, shared by the
    targets, when it already is, and nothing new when another operation ``saved_already`` it or, without dropout,
    when the input is an output of ``llmft.fused_blocks`` that carries a gradient (``rebuilt``): the targets keep
    what rebuilds it; else a copy each) and ``x A^T`` (``r`` values); with dropout, its dropped input in the
    compute dtype instead (a new tensor each)
    and a boolean mask (``in`` bytes, when the input carries a gradient: ``llmft.fused_lora.cpu_dropout`` on a CPU,
    CUDA's fused dropout there). peft's forward, per target: the
    input of ``lora_A`` (``lora_in x in``; with dropout 0 and no autocast the targets share the tensor itself), the
    dropout mask (``mask_bytes x in``, only when dropout > 0 and the input carries a gradient), and the output of
    ``lora_A`` (``lora_in x r``, kept by ``lora_B``). DoRA also keeps the base and LoRA outputs of the layer
    (``2 x linear x out``) for its magnitude's gradient.
    """
    targets = list(targets)
    if not targets:
        return 0.0
    if s.fused:
        c = s.compute_bytes if s.autocast else input_bytes
        inputs = [lin.in_features * c for lin in targets]
        if s.lora.lora_dropout > 0:
            masks = sum(lin.in_features for lin in targets) if input_grad else 0
            return sum(inputs) + masks + len(targets) * s.lora.r * c
        kept = 0 if rebuilt else (0 if saved_already else max(inputs)) if input_bytes == c else sum(inputs)
        return kept + len(targets) * s.lora.r * c
    inputs = [lin.in_features * d.lora_in for lin in targets]
    kept = max(inputs) if (s.lora.lora_dropout == 0 and not s.autocast) else sum(inputs)
    masks = sum(lin.in_features for lin in targets) * mask_bytes(s, 4) if (s.lora.lora_dropout > 0 and input_grad) \
        else 0
    dora = sum(2 * lin.out_features * d.linear for lin in targets) if s.lora.use_dora else 0
    return kept + masks + len(targets) * s.lora.r * d.lora_in + dora


def mask_bytes(s: Setup, input_bytes: int) -> int:
    """Bytes per element of a dropout mask: CUDA's fused dropout keeps a bool mask; the CPU's keeps the scaled
    noise, a tensor of the input's dtype (peft feeds its dropout an fp32 input)."""
    return 1 if s.device == "cuda" else input_bytes


def math_attention(s: Setup) -> bool:
    """Whether the run's ``sdpa`` attention runs torch's math kernel (the training loop's choice)."""
    return s.attn_implementation == "sdpa" and short_attention(s.precision, s.device, s.seq_len)


def attention_saved(s: Setup, d: Dtypes, grads: str = "qkv") -> float:
    """Bytes per token that one layer's attention saves.

    ``sdpa``: query (``n`` heads), key and value (``k`` heads: training passes no mask, ``llmft.loss.right_padded``,
    so torch attends grouped-query without repeating them), output (``a x d`` per head each) and the log-sum-exp
    (4 B per head). torch's math kernel, which the loop picks for a short bf16 batch on a CPU
    (``llmft.hardware.short_attention``), computes in fp32 and keeps the scaled query and key, the value (``n``
    heads) and the probabilities (``4 x n x S`` per token, quadratic in ``S``), but no output, and only what
    the gradients of ``grads`` need (a first layer with LoRA on q and v keeps no query). ``eager`` keeps the softmax probabilities (fp32, plus a ``c`` copy under autocast:
    ``(4 + c) x n x S`` per token, quadratic in ``S``); ``flash_attention_2`` keeps ``k`` heads and no mask.
    """
    a, arch = d.attention, s.arch
    n, k, hd = arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
    if math_attention(s):  # in fp32, what the gradients of ``grads`` (those of q, k, v that need one) need
        q, k, v = (x in grads for x in "qkv")
        return 4 * n * (hd * (k + q + (q or k)) + s.seq_len * (q or k or v))
    if s.attn_implementation == "eager":
        probs = 4 * n * s.seq_len + (a * n * s.seq_len if a < 4 else 0)
        return 3 * a * n * hd + probs
    return a * (2 * n * hd + 2 * k * hd) + 4 * n


def copied_attention_output(s: Setup) -> bool:
    """Whether the output projection's input is a tensor the attention already saved: sdpa's flash kernel saves its
    output, whose transpose is the projection's contiguous input in Llama and Qwen2; eager attention, the math kernel
    (which saves no output) and Phi (which copies it) give the projection a new tensor."""
    return s.attn_implementation != "eager" and not math_attention(s) and s.arch.family != "phi"


def norm_saved(s: Setup, d: Dtypes) -> int:
    """Bytes per token one norm keeps: RMSNorm its fp32 input and reciprocal root (``llmft.fused_blocks``: its
    input in its own dtype); Phi's LayerNorm its input, mean and rstd in the residual stream's dtype (bf16 under
    the CPU's autocast, which leaves layer_norm alone)."""
    if s.arch.family == "phi":
        return d.residual * (s.arch.hidden_size + 2)
    return (d.residual if s.fused_blocks else 4) * s.arch.hidden_size + 4


def layer_saved(s: Setup, d: Dtypes, input_grad: bool = True) -> Dict[str, float]:
    """Bytes per token one decoder layer saves, by part (``norms``, ``attention``, ``mlp``, ``lora``).

    A part saves only when a gradient flows through it: the first layer's input (the embeddings) carries none
    unless input gradients are switched on, so there the input norm and the dropout masks save nothing.
    Llama (RMSNorm): each norm keeps what ``norm_saved`` says; the SwiGLU MLP keeps the
    gate and up outputs and the activation (``3 x linear x I``; ``llmft.fused_blocks``: the gate and up outputs).
    Phi (one LayerNorm, parallel attention and MLP):
    the norm as ``norm_saved`` says; the tanh-GELU keeps four I-sized tensors; the residual
    dropout keeps two masks (``mask_bytes x h`` each).
    """
    short = {lin.name.split(".")[-1] for lin in s.lora.targets(s.arch)}
    chosen: Dict[str, list] = {}
    for lin in s.arch.linears():
        chosen.setdefault(lin.fed_by, []).extend([lin] if lin.name.split(".")[-1] in short else [])
    parts = {"norms": 0.0, "attention": 0.0, "mlp": 0.0, "lora": 0.0}
    h, i = s.arch.hidden_size, s.arch.intermediate_size
    norm = norm_saved(s, d)
    parts["norms"] += norm if input_grad else 0
    rebuilt = s.fused_blocks and s.fused and s.lora.lora_dropout == 0  # fused LoRA layers rebuild their inputs
    parts["lora"] += lora_saved(s, d, chosen["attn_in"], input_grad, d.residual, rebuilt=rebuilt and input_grad)
    attn_grad = input_grad or bool(short & {"q_proj", "k_proj", "v_proj"})
    grads = "".join(x for x in "qkv" if input_grad or f"{x}_proj" in short)
    parts["attention"] += attention_saved(s, d, grads) if attn_grad else 0
    parts["lora"] += lora_saved(s, d, chosen["attn_out"], attn_grad, d.attention, copied_attention_output(s))
    out_grad = attn_grad or bool(short & {"o_proj", "dense"})
    if s.arch.family == "phi":
        return _phi_mlp(s, d, parts, chosen, short, input_grad, out_grad)
    mid_grad = input_grad or out_grad
    parts["norms"] += norm if mid_grad else 0
    parts["lora"] += lora_saved(s, d, chosen["mlp_in"], mid_grad, d.residual, rebuilt=rebuilt and mid_grad)
    gate, up = mid_grad or "gate_proj" in short, mid_grad or "up_proj" in short
    parts["mlp"] += d.linear * i * ((2 * (gate or up)) if s.fused_blocks else (2 * gate + up))
    parts["lora"] += lora_saved(s, d, chosen["mlp_act"], gate or up, d.linear, rebuilt=rebuilt and (gate or up))
    return parts


def _phi_mlp(s: Setup, d: Dtypes, parts, chosen, short, input_grad: bool, attn_out_grad: bool):
    h, i = s.arch.hidden_size, s.arch.intermediate_size
    fc1 = input_grad or "fc1" in short
    cuda_autocast = s.autocast and s.device == "cuda"  # CUDA autocast runs pow in fp32; the CPU's does not
    parts["mlp"] += i * ((12 + d.linear) if cuda_autocast else 4 * d.linear) if fc1 else 0
    parts["lora"] += lora_saved(s, d, chosen["mlp_act"], fc1, d.linear)
    fc2 = fc1 or "fc2" in short
    if s.arch.resid_pdrop > 0:  # the residual dropout's masks (phi-2: resid_pdrop 0.1)
        parts["mlp"] += h * (mask_bytes(s, d.attention) * attn_out_grad + mask_bytes(s, d.linear) * fc2)
    return parts


def activations_per_token(s: Setup) -> Dict[str, float]:
    """Bytes per token all decoder layers save without checkpointing, by part, with the final norm in ``norms``."""
    d = dtypes(s)
    first = layer_saved(s, d, input_grad=s.gradient_checkpointing and not s.quantization)
    rest = layer_saved(s, d, input_grad=True)
    layers = s.arch.num_hidden_layers
    total = {k: first[k] + rest[k] * (layers - 1) for k in rest}
    total["norms"] += norm_saved(s, d)
    return total


def logits_per_token(s: Setup) -> float:
    """Bytes per token at the peak of the loss: the start of its backward pass.

    The model's forward computes logits for every position (``logits x V``; the step holds them in its output),
    the loss upcasts them to fp32 and keeps the log-softmax (``4V``); its backward then holds the loss's
    gradient and the log-softmax gradient (``4V`` each): ``(12 + logits) x V`` in all, 16V in fp32. The chunked
    loss has the same bytes per row, for one chunk's rows at a time (``logit_rows``), unless it computes the head's
    gradient by hand (``Setup.head_by_hand``): the 16-bit logits and their fp32 copy, which becomes the
    probabilities, then a 16-bit copy of those for the product, ``(4 + logits) x V``; 4V in fp32, where the copies
    are the tensor itself.
    """
    logits = dtypes(s).logits
    if s.head_by_hand:
        return (4 if logits == 4 else 4 + logits) * s.arch.vocab_size
    return (12 + logits) * s.arch.vocab_size


def logit_rows(s: Setup, tokens: int) -> int:
    """Rows of vocabulary-wide tensors alive at once: every token with full logits; one chunk with the chunked
    loss (``llmft.loss``), which projects only labelled positions, ``loss_chunk_tokens`` at a time (all
    positions may be labelled, so the plan assumes a full chunk)."""
    return min(tokens, s.loss_chunk_tokens) if s.loss_chunk_tokens else tokens


def chunked_hidden_bytes(s: Setup, tokens: int) -> float:
    """The chunked loss's own tensors besides the chunk: the labelled positions' hidden states (``c`` under
    autocast, else ``w``) and their fp32 gradient, ``(logits + 4) x h`` per token; nothing with full logits."""
    return (dtypes(s).logits + 4) * s.arch.hidden_size * tokens if s.loss_chunk_tokens else 0.0


def head_cast_bytes(s: Setup) -> float:
    """The ``c``-byte copy of an fp32 output head that autocast makes and the backward pass keeps (quantized
    models, whose head ``prepare_model_for_kbit_training`` upcast; the CPU under bf16, whose weights are fp32)."""
    if s.autocast and s.weight_bytes > s.compute_bytes:
        return s.compute_bytes * s.arch.vocab_size * s.arch.hidden_size
    return 0.0


def weight_copies(s: Setup) -> float:
    """The ``c``-byte weight copies autocast makes for the decoder layers, which the backward pass keeps.

    Under autocast a matmul casts an fp32 weight to ``c`` and keeps the copy when its input needs a gradient: every
    LoRA weight (cast once, cached), and on the CPU under bf16 (fp32 weights) every base linear weight but those of
    the first layer's attention inputs (one layer's worth with checkpointing, which recomputes them layer by
    layer). bitsandbytes layers dequantize on the fly and keep nothing.
    """
    if s.fused:
        return _fused_weight_copies(s)
    if not s.autocast:
        return 0.0
    c = s.compute_bytes
    lora = sum(n * count for n, _, count in trainable_tensors(s)) * c
    if s.quantization or s.weight_bytes <= c:
        return lora
    return lora + _base_copies(s, s.arch.linears())


def _base_copies(s: Setup, linears: Iterable[Linear]) -> float:
    """The ``c``-byte copies autocast keeps of the fp32 base weights of ``linears`` (in every layer but the first
    layer's attention inputs; one layer's worth with checkpointing)."""
    per_layer = [(lin.in_features * lin.out_features, lin.fed_by) for lin in linears]
    if s.gradient_checkpointing:
        return sum(n for n, _ in per_layer) * s.compute_bytes
    first = sum(n for n, fed in per_layer if fed != "attn_in")
    return (first + sum(n for n, _ in per_layer) * (s.arch.num_hidden_layers - 1)) * s.compute_bytes


def _fused_weight_copies(s: Setup) -> float:
    """What the fused LoRA layers keep of their weights, per call: ``A`` in the compute dtype (a copy under
    autocast), ``scaling x B`` (always a new tensor) and, where the base weights are wider than what autocast
    computes in, the base weight's copy (in every layer: the function saves it whether or not its input needs a
    gradient); the layers LoRA does not target follow autocast's rule (``weight_copies``)."""
    c, layers = s.compute_bytes if s.autocast else s.weight_bytes, s.arch.num_hidden_layers
    targets = s.lora.targets(s.arch)
    per_layer = sum(s.lora.r * (lin.in_features * (c if s.autocast else 0) + lin.out_features * c)
                    for lin in targets)
    if s.autocast and s.weight_bytes > c:
        per_layer += sum(lin.in_features * lin.out_features * c for lin in targets)
        return per_layer * layers + _base_copies(s, [lin for lin in s.arch.linears() if lin not in targets])
    return per_layer * layers


def eval_bytes(s: Setup, tokens: int) -> float:
    """Bytes of a no-grad perplexity pass over ``tokens``: per row of logits (``logit_rows``) the logits (``w``),
    a shifted fp32 copy and the log-softmax (4 B each); per token one layer's transient buffers
    (``(3I + 2h) x w``)."""
    w = s.weight_bytes
    return (w + 8) * s.arch.vocab_size * logit_rows(s, tokens) + \
        (3 * s.arch.intermediate_size + 2 * s.arch.hidden_size) * w * tokens
