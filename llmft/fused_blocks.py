"""RMSNorm and the SwiGLU product as autograd functions that keep less for the backward pass, and whose outputs
the fused LoRA layers (``llmft.fused_lora``) rebuild in the backward pass instead of keeping them.

What transformers' layers keep, per token of a decoder layer (Llama's family; ``h`` hidden, ``I`` intermediate
size). RMSNorm: its input in fp32 and the reciprocal root; the LoRA layers it feeds (q, k, v; gate, up) then keep
its output for ``lora_A``'s gradient. The MLP's ``act(gate) * up``: the gate and up outputs and the activation;
``down_proj``'s LoRA layer then keeps the product. Here:

- ``rms_norm`` keeps its input in its own dtype and the reciprocal root; ``swiglu`` keeps the gate and up
  outputs. Their backward passes are written out (``tests/test_fused_blocks.py`` holds them to autograd's).
- Each output carries how to rebuild it from what its function keeps anyway (``REBUILD``): a fused LoRA layer fed
  such an output keeps those same tensors (no new memory) and recomputes the output in its backward pass, once
  for all the layers it feeds. The recomputation is the forward's own arithmetic, so it is bit for bit the tensor
  the forward pass used.

In fp32 with LoRA on every linear layer that is ``2h + 2I`` values less per token and layer (for SmolLM2-135M 17
KB of 45, a third of what a training step keeps). A layer is fused when its ``forward`` is compiled from the same
code as transformers' ``LlamaRMSNorm`` or ``LlamaMLP`` (Mistral's, Qwen2's and Qwen3's norms and MLPs and Phi-3's
norm are generated from Llama's), a norm's weight is frozen and an MLP's activation is SiLU; anything else keeps
its own forward (Gemma's ``1 + w`` norm and GELU MLP, Phi-3's fused gate and up projection).
"""

import types
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

REBUILD = "_llmft_rebuild"  # the attribute of an output tensor: (tensors, Rebuilt)


class Rebuilt:
    """How the consumers of one output recompute it in the backward pass: ``fn(*tensors)``, computed by the first
    consumer's backward pass and kept until the last one (``users`` registered in the forward pass) has run. It
    holds no tensor outside the backward pass, so that saved-tensor hooks (checkpointing) see every tensor kept."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn, self.users, self.value = fn, 0, None

    def get(self, tensors) -> torch.Tensor:
        value = self.value if self.value is not None else self.fn(*tensors)
        self.users -= 1
        self.value = value if self.users > 0 else None
        return value


def rebuild_of(x: torch.Tensor) -> Optional[Tuple[tuple, Rebuilt]]:
    """What rebuilds ``x`` (the tensors to keep and the shared ``Rebuilt``), or None for an ordinary tensor."""
    return getattr(x, REBUILD, None)


def _normed(x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * (x.float() * rstd).to(x.dtype)  # LlamaRMSNorm's last two lines


def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)


class _RMSNorm(torch.autograd.Function):
    """``weight * x / rms(x)`` with a frozen ``weight``; ``rstd`` (computed without a graph) is an input, and the
    backward pass gives ``x`` its whole gradient, through ``rstd`` too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, rstd, weight)
        return _normed(x, rstd, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        xf = x.float()
        dn = (grad * weight).float()  # the normalised input's gradient, formed as autograd forms it
        dx = (dn * rstd).sub_(xf * (rstd.pow(3) * (dn * xf).mean(-1, keepdim=True)))
        return dx.to(x.dtype), None, None


def _swiglu_value(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up  # LlamaMLP's act_fn(gate) * up


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return _swiglu_value(gate, up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        gate_f = gate.float()
        sig = torch.sigmoid(gate_f)
        silu = gate_f * sig
        grad_up = (grad * silu.to(grad.dtype)).to(up.dtype) if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:  # silu'(g) = s (1 + g (1 - s))
            d_silu = sig.mul_(silu.neg_().add_(gate_f).add_(1))
            grad_gate = (grad * up).float().mul_(d_silu).to(gate.dtype)
        return grad_gate, grad_up


def _tagged(out: torch.Tensor, tensors: tuple, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    setattr(out, REBUILD, (tensors, Rebuilt(fn)))
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s forward with a frozen ``weight``; under autograd, through ``_RMSNorm``, its output
    tagged with its rebuild."""
    with torch.no_grad():
        rstd = _rstd(x, eps)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _normed(x, rstd, weight)
    return _tagged(_RMSNorm.apply(x, rstd, weight), (x, rstd, weight), _normed)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``; under autograd, through ``_SwiGLU``, its output tagged with its rebuild."""
    if not (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        return _swiglu_value(gate, up)
    return _tagged(_SwiGLU.apply(gate, up), (gate, up), _swiglu_value)


def _norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def _same_code(fn, reference) -> bool:
    a, b = getattr(fn, "__code__", None), reference.__code__
    return a is not None and (a.co_code, a.co_names, a.co_consts) == (b.co_code, b.co_names, b.co_consts)


def fuse_blocks(model: torch.nn.Module) -> int:
    """Give every Llama-style RMSNorm with a frozen weight and every SwiGLU MLP of ``model`` the forward above (in
    place, on the module instance); returns how many."""
    from transformers.activations import SiLUActivation
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    count = 0
    for module in model.modules():
        forward = type(module).forward
        if _same_code(forward, LlamaRMSNorm.forward) and not module.weight.requires_grad:
            module.forward = types.MethodType(_norm_forward, module)
        elif _same_code(forward, LlamaMLP.forward) and isinstance(module.act_fn, (SiLUActivation, torch.nn.SiLU)):
            module.forward = types.MethodType(_mlp_forward, module)
        else:
            continue
        count += 1
    return count
