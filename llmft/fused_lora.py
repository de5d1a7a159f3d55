"""A LoRA linear layer and its frozen base computed as one function: fewer passes over the activations.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate operations; under autocast, with
fp32 adapters, each adds its own casts of ``x``, a full-size product, a full-size multiplication by ``scaling``
and a full-size sum, forward and backward. On a CPU these passes over ``[tokens, features]`` tensors, not the
matrix multiplications, took most of a step (``benchmarks/throughput.py``). Here the forward is two matrix
multiplications and one accumulating one (``y = x W^T; y += (x A^T)(s B)^T``), and the backward four small ones
and one accumulating one, all in the autocast dtype; the gradients equal peft's (``tests/test_fused_lora.py``).

Dropout is peft's own module, applied to the LoRA branch's input before the function (its mask and its backward
are autograd's); the function then keeps the dropped input instead of the input, which the frozen base's
gradient does not need. Only the plain case is fused: one active adapter, no DoRA or other variant, a frozen
``torch.nn.Linear`` base without trainable bias, no ``lora_bias``, not merged, adapters enabled. Anything else
(QLoRA's 4-bit bases, ``lora=dora``, mixed-adapter batches) runs peft's own forward.
"""

from typing import Any, Optional

import torch
from peft.tuners.lora import Linear as LoraLinear


class _LoraLinearFunction(torch.autograd.Function):
    """``x W^T + b + s (d A^T) B^T``, ``d`` the dropped input (``x`` itself when ``dropped`` is None), with
    gradients for ``x``, ``d``, ``A`` and ``B`` only (``W`` and ``b`` frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ctx.shapes = (x.shape, x.dtype, lora_a.dtype, lora_b.dtype, scaling)  # the gradients' dtypes: the inputs'
        with torch.autocast(device, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            weight, lora_a = weight.to(dtype), lora_a.to(dtype)
            scaled_b = (lora_b * scaling).to(dtype)
            source = flat if dropped is None else dropped.reshape(flat.shape).to(dtype)
            down = source @ lora_a.t()
            out = flat @ weight.t() if bias is None else torch.addmm(bias.to(dtype), flat, weight.t())
            out.addmm_(down, scaled_b.t())
        ctx.dropout = dropped is not None
        ctx.save_for_backward(source, down, weight, lora_a, scaled_b)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        source, down, weight, lora_a, scaled_b = ctx.saved_tensors
        x_shape, x_dtype, a_dtype, b_dtype, scaling = ctx.shapes
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
        return grad_x, grad_dropped, None, None, grad_a, grad_b, None


class FusedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose forward takes the fused path when it can (see the module's docstring) and
    peft's own otherwise. Everything else (saving, merging, unloading, disabling) is peft's, unchanged."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not self._fusable():
            return super().forward(x, *args, **kwargs)
        name = self.active_adapters[0]
        base = self.get_base_layer()
        dropout = self.lora_dropout[name]
        dropped = dropout(x) if dropout.training and getattr(dropout, "p", 0) > 0 else None
        return _LoraLinearFunction.apply(x, dropped, base.weight, base.bias, self.lora_A[name].weight,
                                         self.lora_B[name].weight, self.scaling[name])

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
    """Give every peft LoRA ``Linear`` of ``model`` the fused forward (in place); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
