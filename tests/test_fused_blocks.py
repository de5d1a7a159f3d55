"""llmft.fused_blocks: RMSNorm and SwiGLU with written-out backward passes equal autograd's, and the fused LoRA
layers rebuild their inputs instead of keeping them: the saved tensors shrink by exactly what the module says,
the gradients do not change (also under gradient checkpointing), and models whose norm or MLP is not Llama's keep
their own forward."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from llmft.fused_blocks import fuse_blocks, rms_norm, swiglu
from llmft.fused_lora import fuse_lora
from llmft.loss import lm_loss_sum, right_padded
from tests.test_fused_lora import batch, loss_and_grads, peft_model
from tests.test_loss import SMALL
from tests.test_planning_activations import saved_storage_bytes


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_norm_and_swiglu_gradients_equal_autograds(dtype, tol):
    torch.manual_seed(0)
    x = (torch.randn(3, 7, 48) * 3).to(dtype)
    weight = (torch.rand(48) + 0.5).to(dtype)
    norm = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    norm.weight.data.copy_(weight)
    norm.weight.requires_grad_(False)
    grad = torch.randn(3, 7, 48).to(dtype)
    for fn in (norm, lambda t: rms_norm(t, weight, 1e-5)):
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        out.backward(grad)
        if fn is norm:
            reference, reference_grad = out.detach(), leaf.grad
    assert torch.equal(out.detach(), reference)  # the forward is transformers' own arithmetic
    assert torch.allclose(leaf.grad.float(), reference_grad.float(), atol=tol, rtol=tol)
    gate, up = torch.randn(5, 64).to(dtype), torch.randn(5, 64).to(dtype)
    grad = torch.randn(5, 64).to(dtype)
    results = []
    for fn in (lambda g, u: F.silu(g) * u, swiglu):
        g, u = gate.clone().requires_grad_(), up.clone().requires_grad_()
        out = fn(g, u)
        out.backward(grad)
        results.append((out.detach(), g.grad, u.grad))
    assert torch.equal(results[0][0], results[1][0])
    for ours, theirs in zip(results[1][1:], results[0][1:]):
        assert torch.allclose(ours.float(), theirs.float(), atol=tol, rtol=tol)


def test_fused_lora_layers_keep_what_the_norm_and_swiglu_keep_not_their_outputs():
    plain = peft_model()
    fuse_lora(plain)
    for module in plain.modules():  # back to transformers' norms and MLPs, the LoRA layers still fused
        module.__dict__.pop("forward", None)
    fused = copy.deepcopy(plain)
    assert fuse_blocks(fused) == 3 * SMALL["num_hidden_layers"] + 1  # two norms and an MLP a layer, the final norm
    plain.train(), fused.train()
    data = batch(plain.config.vocab_size)
    saved = (saved_storage_bytes(plain, lambda: lm_loss_sum(plain, data)[0])
             - saved_storage_bytes(fused, lambda: lm_loss_sum(fused, data)[0]))
    h, i, layers = SMALL["hidden_size"], SMALL["intermediate_size"], SMALL["num_hidden_layers"]
    # per token and layer: the two norms' outputs (h each) and the activation and product (I each), in fp32; but
    # the first layer's input norm, whose input (the embeddings) needs no gradient, is transformers' own
    assert saved == data["input_ids"].numel() * 4 * (layers * (2 * h + 2 * i) - h)
    assert_same_training(plain, fused, data, tol=1e-6)


def assert_same_training(reference, model, data, tol: float):
    loss, grads = loss_and_grads(reference, data)
    other_loss, other_grads = loss_and_grads(model, data)
    assert other_loss == pytest.approx(loss, abs=tol)
    for name, grad in grads.items():
        assert torch.allclose(other_grads[name], grad, atol=tol, rtol=10 * tol), name


def test_rebuilt_inputs_under_gradient_checkpointing():
    reference = peft_model()
    lean = copy.deepcopy(reference)
    fuse_lora(lean)
    lean.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lean.base_model.model.enable_input_require_grads()
    reference.train(), lean.train()
    assert_same_training(reference, lean, batch(reference.config.vocab_size), tol=1e-5)


def test_only_llamas_norm_and_a_silu_mlp_are_fused():
    from transformers import AutoConfig, AutoModelForCausalLM

    gemma = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=100))  # (1 + w) norms and a GELU MLP
    assert fuse_blocks(gemma) == 0
    mlp = LlamaMLP(type("C", (), dict(hidden_size=8, intermediate_size=16, mlp_bias=False, hidden_act="gelu"))())
    norm = LlamaRMSNorm(8)  # a trained norm weight keeps its own forward (its gradient is not written out)
    assert fuse_blocks(torch.nn.ModuleList([mlp, norm])) == 0


def test_right_padding_is_recognised_and_nothing_else():
    assert right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding (generation)
    assert not right_padded(torch.tensor([[1, 0, 1]]))  # a hole
    assert not right_padded(torch.tensor([[1, 2, 2]]))  # not a padding mask


def test_a_right_padded_batch_runs_without_its_mask(monkeypatch):
    model = peft_model()
    data = batch(model.config.vocab_size)
    assert not bool(data["attention_mask"].all())  # the batch is padded
    seen = {}
    inner = model.base_model.model.model
    original = type(inner).forward

    def spy(self, *args, **kwargs):
        seen["mask"] = kwargs.get("attention_mask")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(inner), "forward", spy)
    loss, n = lm_loss_sum(model, data)
    assert seen["mask"] is None
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    labels = data["labels"][:, 1:]
    full = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    assert float(loss) == pytest.approx(float(full), rel=1e-6)  # a sum over every labelled token
