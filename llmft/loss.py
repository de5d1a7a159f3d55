"""The next-token loss without the full logits: the output projection and cross-entropy run over the labelled
positions only, a chunk of tokens at a time.

How the hidden states are obtained. The model is called through its top-level ``forward`` (so that the hooks of a
DDP wrapper, of accelerate's autocast and of peft all run), with a forward pre-hook on the output layer
(``get_output_embeddings()``, i.e. ``lm_head``). The hook keeps the tensor that the model was about to project -
by construction the post-norm last hidden state, whatever the architecture calls its final norm (``norm`` in
llama/qwen2/phi3, ``final_layernorm`` in phi) - and hands the output layer an empty slice of it instead, so the
model's own ``[batch, sequence, vocabulary]`` logits are never computed. This was preferred over
``output_hidden_states=True``: in transformers 5.x the recorded hidden states are the decoder layers' outputs, so
the last one's normalisation depends on the model's recording rules, and in evaluation (no autograd graph) all
layers' states would be kept alive for nothing.

Each chunk's gradient for its hidden states is computed in the forward pass, while its logits exist anyway, and
kept (``[chunk, hidden]``); a trained output layer instead has the chunk recomputed in the backward pass
(``torch.utils.checkpoint``). Either way no more than one chunk's ``[chunk, vocabulary]`` float32 logits (and
their gradient) exist at any time, forward or backward. The
output layer is called as a module, so a bias (phi-2), tied embeddings, a LoRA-adapted ``lm_head`` or a
quantized one behave exactly as in the model's own forward. What the model's forward does after ``lm_head`` is
reproduced per model type (``HEAD_TRANSFORMS``); a model type not listed there is refused.
"""

import contextlib
import functools
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from llmft.data.tokenize import IGNORE_INDEX
from llmft.errors import ConfigError

PLAIN_HEADS = {"llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "smollm3", "olmo", "olmo2",
               "starcoder2", "stablelm"}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _softcap(config) -> Callable[[torch.Tensor], torch.Tensor]:
    cap = config.final_logit_softcapping
    return _identity if cap is None else (lambda x: torch.tanh(x / cap) * cap)


# model_type -> the function of the config that the CausalLM forward applies to lm_head's output
# (transformers 5.x modeling_<type>.py, read line by line)
HEAD_TRANSFORMS: Dict[str, Callable] = {
    **{t: lambda config: _identity for t in PLAIN_HEADS},
    "gemma2": _softcap, "gemma3_text": _softcap,
    "cohere": lambda config: (lambda x: x * config.logit_scale),
    "cohere2": lambda config: (lambda x: x * config.logit_scale),
    "granite": lambda config: (lambda x: x / config.logits_scaling),
}


def head_transform(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model's forward applies to the output layer's logits (soft-capping, scaling, or nothing).

    Raises:
        ConfigError: a model type whose forward has not been checked for what follows ``lm_head``.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in HEAD_TRANSFORMS:
        raise ConfigError(
            f"the chunked loss does not know what a '{model_type}' model does to its logits after lm_head "
            f"(soft-capping or scaling would change the loss). Known model types: {', '.join(sorted(HEAD_TRANSFORMS))}. "
            "Add the type to llmft.loss.HEAD_TRANSFORMS after reading its modeling file, or use a listed model.")
    return HEAD_TRANSFORMS[model_type](config)


@contextlib.contextmanager
def _capture_head_input(head: torch.nn.Module):
    """While open, the output layer's input is stored in the yielded dict and the layer gets an empty slice."""
    captured: Dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")
        captured["hidden"] = hidden
        return (hidden[..., :0, :],) + tuple(args[1:]), kwargs

    handle = head.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def _chunk_loss(head: torch.nn.Module, transform: Callable, hidden: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    logits = transform(head(hidden)).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _linear_head_by_hand(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor):
    """One chunk's summed cross-entropy through a plain linear output layer, and its gradient for ``hidden`` by
    hand: ``(softmax - one-hot) W``. The chunk's fp32 logits become the probabilities in place, so the peak is
    the 16-bit logits and their fp32 copy, then the fp32 probabilities and their copy in the logits' dtype for
    the product: 6 bytes a logit under 16-bit autocast, 4 in fp32 (where the copies are the tensor itself),
    against autograd's 14 or 16 (the log-softmax and two gradients). The same arithmetic as autograd's:
    ``tests/test_loss.py`` holds both to 1e-5."""
    logits = head(hidden)
    dtype = logits.dtype
    z = logits.float()
    del logits
    rows = torch.arange(len(targets), device=z.device)
    picked = z[rows, targets]
    top = z.amax(dim=1, keepdim=True)
    total = z.sub_(top).exp_().sum(dim=1, keepdim=True)
    loss = (total.log() + top).squeeze(1).sub_(picked).sum()
    z.div_(total)[rows, targets] -= 1
    weight = head.weight if head.weight.dtype == dtype else head.weight.to(dtype)
    return loss, (z.to(dtype) @ weight).to(hidden.dtype)


class _FrozenHeadChunk(torch.autograd.Function):
    """One chunk's loss whose gradient for the hidden states is computed in the forward pass, while the chunk's
    logits exist anyway, and kept (``[chunk, hidden]``, small): two output-layer matmuls per chunk instead of the
    three of recomputation. Only for an output layer without trainable parameters (their gradients would be lost).
    A plain ``nn.Linear`` head whose logits the model uses as they are gets its gradient by hand
    (``_linear_head_by_hand``); any other (quantized, soft-capped, scaled) goes through autograd."""

    @staticmethod
    def forward(ctx, hidden, head, transform, targets):
        if type(head) is torch.nn.Linear and transform is _identity:
            loss, grad = _linear_head_by_hand(hidden, head, targets)
        else:
            with torch.enable_grad():
                leaf = hidden.detach().requires_grad_()
                loss = _chunk_loss(head, transform, leaf, targets)
                (grad,) = torch.autograd.grad(loss, leaf)
        ctx.save_for_backward(grad)
        return loss.detach()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of an attention mask is its tokens followed by padding, if any.

    Then the mask changes no labelled position's loss: under causal attention a token attends only to the tokens
    before it, which are its row's own, and padding only follows them. Without it transformers calls torch's
    attention with ``is_causal`` alone, which keeps the key-value heads unrepeated (grouped-query attention) and
    builds no ``[length, length]`` mask per layer: for SmolLM2 in fp32, 5 KB less kept per token and layer at 512
    tokens (``tests/test_fused_blocks.py`` holds the loss to the masked model's)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(((mask == 0) | (mask == 1)).all())


def _labelled_hidden(model: torch.nn.Module, batch: Dict[str, torch.Tensor], chunk_tokens: int):
    """One forward pass: the output layer, its transform, and the hidden states and targets of the labelled
    positions (position t is kept when token t+1 is labelled), with the row each comes from."""
    if chunk_tokens < 1:
        raise ConfigError(f"loss_chunk_tokens must be at least 1, got {chunk_tokens}.")
    inner = extract_model_from_parallel(model, keep_fp32_wrapper=True)
    head = inner.get_output_embeddings()
    transform = head_transform(inner.config)
    labels = batch["labels"]
    keep = labels[:, 1:] != IGNORE_INDEX
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if batch.get(k) is not None}
    if "attention_mask" in inputs and right_padded(inputs["attention_mask"]):
        del inputs["attention_mask"]
    with _capture_head_input(head) as captured:
        model(**inputs, use_cache=False)
    return head, transform, captured["hidden"][:, :-1][keep], labels[:, 1:][keep], keep.nonzero()[:, 0]


def _chunked(fn: Callable, head: torch.nn.Module, transform: Callable, hidden: torch.Tensor, targets: torch.Tensor,
             chunk_tokens: int) -> List[torch.Tensor]:
    """``fn(head, transform, hidden, targets)`` chunk by chunk, each chunk recomputed in the backward pass."""
    parts = []
    for start in range(0, targets.numel(), chunk_tokens):
        h, y = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(fn, head, transform, h, y, use_reentrant=False))
        else:
            parts.append(fn(head, transform, h, y))
    return parts


def lm_loss_sum(model: torch.nn.Module, batch: Dict[str, torch.Tensor],
                chunk_tokens: int = 2048) -> Tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions of a batch, and the number of those positions.

    Args:
        model: a causal LM (a peft ``PeftModel``, possibly wrapped by accelerate/DDP).
        batch: ``input_ids`` and ``labels`` (-100: not trained) ``[batch, length]``, with ``attention_mask``
            (a padded batch) or ``position_ids`` (a packed batch, positions restarting at each record).
        chunk_tokens: labelled positions projected to the vocabulary at once.

    Returns:
        The summed loss (a scalar that backpropagates when grad is enabled) and the count of labelled positions;
        divide the first by the second (or by a window's count) for the mean.
    """
    head, transform, hidden, targets, _ = _labelled_hidden(model, batch, chunk_tokens)
    frozen_head = not any(p.requires_grad for p in head.parameters())
    if torch.is_grad_enabled() and hidden.requires_grad and frozen_head and not isinstance(model, FSDPModule):
        parts = [_FrozenHeadChunk.apply(hidden[start:start + chunk_tokens], head, transform,
                                        targets[start:start + chunk_tokens])
                 for start in range(0, targets.numel(), chunk_tokens)]
    else:  # no gradient, a trained head (LoRA or modules_to_save on lm_head), or FSDP2 (whose backward crashed the
        # process with SIGSEGV after _FrozenHeadChunk's in-forward autograd.grad, torch 2.13): recompute in backward
        parts = _chunked(_chunk_loss, head, transform, hidden, targets, chunk_tokens)
    total = functools.reduce(torch.add, parts) if parts else hidden.float().sum() * 0.0  # nothing labelled: a zero
    return total, int(targets.numel())                                                   # that belongs to the graph


def _chunk_logps(head: torch.nn.Module, transform: Callable, hidden: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    logits = transform(head(hidden)).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def sequence_logps(model: torch.nn.Module, batch: Dict[str, torch.Tensor],
                   chunk_tokens: int = 2048) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of a padded batch: the summed log-probability of its labelled tokens, and how many there are.

    The same forward pass and chunked projection as ``lm_loss_sum`` (no ``[tokens, vocabulary]`` tensor larger
    than a chunk), reduced per row instead of over the batch: what a preference loss (DPO, ORPO) compares.

    Args:
        model: a causal LM (a peft ``PeftModel``, possibly wrapped by accelerate/DDP).
        batch: ``input_ids``, ``attention_mask`` and ``labels`` ``[rows, length]`` (one sequence per row).
        chunk_tokens: labelled positions projected to the vocabulary at once.

    Returns:
        ``[rows]`` float32 sums (they backpropagate when grad is enabled) and ``[rows]`` token counts.
    """
    head, transform, hidden, targets, rows = _labelled_hidden(model, batch, chunk_tokens)
    n = batch["labels"].shape[0]
    sums = hidden.new_zeros(n, dtype=torch.float32)
    parts = _chunked(_chunk_logps, head, transform, hidden, targets, chunk_tokens)
    if parts:
        sums = sums.index_add(0, rows, torch.cat(parts))
    else:  # nothing labelled: zeros that still belong to the graph
        sums = sums + hidden.float().sum() * 0.0
    return sums, torch.bincount(rows, minlength=n)
