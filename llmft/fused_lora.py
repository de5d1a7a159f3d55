"""A LoRA linear layer and its frozen base computed as one function: fewer passes over the activations.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate operations; under autocast, with
fp32 adapters, each adds its own casts of ``x``, a full-size product, a full-size multiplication by ``scaling``
and a full-size sum, forward and backward. On a CPU these passes over ``[tokens, features]`` tensors, not the
matrix multiplications, took most of a step (``benchmarks/throughput.py``). Here the forward is two matrix
multiplications and one accumulating one (``y = x W^T; y += (x A^T)(s B)^T``), and the backward four small ones
and one accumulating one, all in the autocast dtype; the gradients equal peft's (``tests/test_fused_lora.py``).

Without dropout, an input that ``llmft.fused_blocks`` produced (an RMSNorm's output, the SwiGLU product) is not kept:
the function keeps what its producer keeps anyway and rebuilds the input in the backward pass.

Dropout is applied to the LoRA branch's input before the function (its backward is autograd's): on a CPU by
``cpu_dropout`` below, elsewhere by peft's own module; the function then keeps the dropped input instead of the
input, which the frozen base's gradient does not need. Only the plain case is fused: one active adapter, no
DoRA or other variant, a frozen ``torch.nn.Linear`` base without trainable bias, no ``lora_bias``, not merged,
adapters enabled. Anything else (QLoRA's 4-bit bases, ``lora=dora``, mixed-adapter batches) runs peft's own
forward; without gradients (evaluation, generation) the fused path skips autograd's function machinery.
"""

from typing import Any, Optional

import torch
from peft.tuners.lora import Linear as LoraLinear

from llmft.fused_blocks import fuse_blocks, rebuild_of
from llmft.quantization import is_quantized


DROPOUT_STEPS = 1 << 16  # a CPU dropout probability is rounded to a multiple of 1/65536


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of ``x`` on a CPU: each element zeroed with probability ``p`` rounded to a multiple of
    1/65536 (0.05 -> 0.0500031), the others scaled by 1 / (1 - that probability), so the expectation is ``x``.

    torch's CPU dropout draws one random number per element; here each 64-bit draw of the same generator (so a
    seed, and a resumed run's restored generator, give the same masks) decides four elements by 16 bits each: the
    mask of a ``[1008, 576]`` bf16 input costs 0.8 ms instead of 2.7 (``torch.bernoulli_``), and ``cpu_dropout`` as a
    whole 1.4 ms instead of 3.0 (``F.dropout``); in the default run that is 60 calls per step. Like
    ``F.dropout``, autograd keeps only the boolean mask for the backward pass.
    """
    threshold = round(p * DROPOUT_STEPS)
    if threshold <= 0:
        return x
    if threshold >= DROPOUT_STEPS:
        return torch.zeros_like(x)
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    dropped = bits.view(torch.int16)[: x.numel()].view(x.shape) < threshold - DROPOUT_STEPS // 2
    return x.masked_fill(dropped, 0).mul_(DROPOUT_STEPS / (DROPOUT_STEPS - threshold))


def _forward(x: torch.Tensor, dropped: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
             lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float):
    """``x W^T + b + s (d A^T) B^T`` in the autocast dtype (``x``'s without autocast), and what the backward pass
    needs: ``(out, (source, down, weight, lora_a, scaled_b))``."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with torch.autocast(device, enabled=False):
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        weight, lora_a = weight.to(dtype), lora_a.to(dtype)
        scaled_b = (lora_b * scaling).to(dtype)
        source = flat if dropped is None else dropped.reshape(flat.shape).to(dtype)
        down = source @ lora_a.t()
        out = flat @ weight.t() if bias is None else torch.addmm(bias.to(dtype), flat, weight.t())
        out.addmm_(down, scaled_b.t())
    return out.view(*x.shape[:-1], out.shape[-1]), (source, down, weight, lora_a, scaled_b)


class _LoraLinearFunction(torch.autograd.Function):
    """``_forward`` with gradients for ``x``, ``d``, ``A`` and ``B`` only (``W`` and ``b`` frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float, rebuild=None) -> torch.Tensor:
        ctx.shapes = (x.shape, x.dtype, lora_a.dtype, lora_b.dtype, scaling)  # the gradients' dtypes: the inputs'
        out, saved = _forward(x, dropped, weight, bias, lora_a, lora_b, scaling)
        ctx.dropout = dropped is not None
        ctx.rebuilt = None
        if rebuild is not None:  # keep what rebuilds the input (its producer keeps it anyway), not the input
            tensors, ctx.rebuilt = rebuild
            ctx.rebuilt.users += 1
            ctx.kept = len(tensors)
            saved = (*tensors, *saved[1:])
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        x_shape, x_dtype, a_dtype, b_dtype, scaling = ctx.shapes
        if ctx.rebuilt is None:
            source, down, weight, lora_a, scaled_b = saved
        else:
            down, weight, lora_a, scaled_b = saved[ctx.kept:]
            source = ctx.rebuilt.get(saved[:ctx.kept]).reshape(-1, x_shape[-1]).to(weight.dtype)
        grad = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        grad_down = grad @ scaled_b  # [tokens, r]
        grad_x = grad_dropped = None
        if ctx.dropout:
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight).view(x_shape).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_dropped = (grad_down @ lora_a).view(x_shape).to(x_dtype)
        elif ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).addmm_(grad_down, lora_a).view(x_shape).to(x_dtype)
        grad_a = (grad_down.t() @ source).to(a_dtype) if ctx.needs_input_grad[4] else None
        grad_b = (grad.t() @ down).mul_(scaling).to(b_dtype) if ctx.needs_input_grad[5] else None
        return grad_x, grad_dropped, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose forward takes the fused path when it can (see the module's docstring) and
    peft's own otherwise. Everything else (saving, merging, unloading, disabling) is peft's, unchanged."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not self._fusable():
            return super().forward(x, *args, **kwargs)
        name = self.active_adapters[0]
        base = self.get_base_layer()
        dropout = self.lora_dropout[name]
        p = getattr(dropout, "p", 0) if dropout.training else 0
        dropped = None if not p else cpu_dropout(x, p) if x.device.type == "cpu" else dropout(x)
        args = (x, dropped, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                self.scaling[name])
        if not torch.is_grad_enabled():  # evaluation and generation: no graph, so no autograd.Function (65 us a call)
            return _forward(*args)[0]
        return _LoraLinearFunction.apply(*args, None if dropped is not None else rebuild_of(x))

    def _fusable(self) -> bool:
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return False
        name = self.active_adapters[0]
        base = self.get_base_layer()
        if name not in self.lora_A or name in self.lora_variant or type(base) is not torch.nn.Linear:
            return False
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return False
        return self.lora_B[name].bias is None and self.lora_A[name].bias is None


def fuse_lora(model: torch.nn.Module) -> int:
    """Give every peft LoRA ``Linear`` of ``model`` the fused forward, and its RMSNorms and SwiGLU MLPs those of
    ``llmft.fused_blocks`` (in place; not a quantized model's); returns how many LoRA layers."""
    if not is_quantized(model):
        fuse_blocks(model)
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
