"""The fused LoRA layer (llmft.fused_lora) computes what peft computes: outputs and gradients equal to 1e-5 in fp32
on a tiny Llama (with and without a base bias), close under bf16 autocast; and every case it does not fuse falls
back to peft's own forward (a disabled adapter, a merged one, DoRA). On a CPU the fused layer's dropout is
llmft's own (``cpu_dropout``, four elements per 64-bit draw): tested for its rate, its scale, its gradient and its
seed, and, given the same masks, the fused layer with dropout equals peft's."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llmft.fused_lora import FusedLoraLinear, cpu_dropout, fuse_lora
from llmft.loss import lm_loss_sum
from tests.test_loss import SMALL, records
from llmft.data import pad_collate
from llmft.models import build_tiny


def peft_model(bias: bool = False, **lora):
    torch.manual_seed(0)
    model = build_tiny(arch=SMALL).model
    if bias:  # a base with biases (as Qwen2's q/k/v projections have)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is None and module.out_features < 1000:
                module.bias = torch.nn.Parameter(torch.randn(module.out_features) * 0.1, requires_grad=False)
    settings = {**dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"), **lora}
    model = get_peft_model(model, LoraConfig(**settings))
    for name, p in model.named_parameters():  # B starts at zero; make it non-zero so every gradient is tested
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


class CpuDropout(torch.nn.Dropout):
    def forward(self, x):
        return cpu_dropout(x, self.p) if self.training else x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_rate_scale_gradient_and_seed(dtype):
    x = (torch.rand(1000, 999) + 0.5).to(dtype).requires_grad_()  # no zero of its own
    torch.manual_seed(3)
    y = cpu_dropout(x, 0.05)
    dropped = y == 0
    assert y.dtype == dtype and abs(dropped.float().mean().item() - 0.05) < 0.002  # 999,000 draws: 4.5 sigma
    kept = ~dropped
    scale = 65536 / (65536 - 3277)  # 0.05 rounds to 3277/65536
    assert torch.allclose(y[kept].float(), x[kept].float() * scale, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped) and torch.allclose(x.grad[kept].float(), torch.tensor(scale), rtol=1e-2)
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(x.detach(), 0.05) == 0, dropped)  # the same seed, the same mask
    assert not torch.equal(cpu_dropout(x.detach(), 0.05) == 0, dropped)  # the generator moved on
    assert cpu_dropout(x, 0.0) is x and torch.count_nonzero(cpu_dropout(x, 1.0)) == 0


def loss_and_grads(model, batch, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, n = lm_loss_sum(model, batch)
    (loss / n).backward()
    return float(loss.detach() / n), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def batch(vocab):
    return pad_collate(records(vocab), pad_token_id=0)


@pytest.mark.parametrize("bias,dropout", [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_fused_equals_peft_in_fp32(bias, dropout):
    reference = peft_model(bias, lora_dropout=dropout)
    fused = copy.deepcopy(reference)
    reference.train(), fused.train()
    assert fuse_lora(fused) == 7 * SMALL["num_hidden_layers"]
    for module in reference.modules():  # peft's forward, with the masks the fused layer draws on a CPU
        if hasattr(module, "lora_dropout") and dropout:
            module.lora_dropout["default"] = CpuDropout(dropout)
    data = batch(reference.config.vocab_size)
    loss, grads = loss_and_grads(reference, data)
    fused_loss, fused_grads = loss_and_grads(fused, data)
    assert fused_loss == pytest.approx(loss, abs=1e-5)
    assert grads.keys() == fused_grads.keys() and len(grads) == 2 * 7 * SMALL["num_hidden_layers"]
    for name, grad in grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-5, rtol=1e-4), name
        assert grad.abs().max() > 0, name  # every gradient is really compared


def test_fused_stays_close_under_bf16_autocast_and_with_bf16_base_weights():
    reference = peft_model()
    fused = copy.deepcopy(reference)
    fuse_lora(fused)
    for name, p in fused.named_parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # what the CPU bf16 profile loads
    data = batch(reference.config.vocab_size)
    loss, grads = loss_and_grads(reference, data, autocast=True)
    fused_loss, fused_grads = loss_and_grads(fused, data, autocast=True)
    assert fused_loss == pytest.approx(loss, rel=2e-2)
    assert all(g.dtype == torch.float32 for g in fused_grads.values())  # the adapters stay fp32 for the optimizer
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads.values()]),
                                                   torch.cat([g.flatten() for g in fused_grads.values()]), dim=0)
    assert cosine > 0.99


def test_what_is_not_fused_runs_peft_forward(monkeypatch):
    calls = []
    original = FusedLoraLinear._fusable

    def spy(self):
        calls.append(original(self))
        return calls[-1]

    monkeypatch.setattr(FusedLoraLinear, "_fusable", spy)
    data = batch(peft_model().config.vocab_size)
    model = peft_model(lora_dropout=0.1)
    fuse_lora(model)
    model.train()
    lm_loss_sum(model, data)
    assert calls and all(calls)  # dropout while training: fused
    calls.clear()
    model.eval()
    with torch.no_grad():
        lm_loss_sum(model, data)
    assert calls and all(calls)  # evaluation: dropout is off, fused
    calls.clear()
    with torch.no_grad(), model.disable_adapter():
        lm_loss_sum(model, data)
    assert calls and not any(calls)


def test_disabled_merged_and_dora_adapters_give_peft_results():
    data = batch(peft_model().config.vocab_size)
    reference, fused = peft_model(), peft_model()
    fuse_lora(fused)
    with torch.no_grad():
        with reference.disable_adapter(), fused.disable_adapter():
            assert lm_loss_sum(fused, data)[0] == pytest.approx(float(lm_loss_sum(reference, data)[0]), abs=1e-5)
        before = float(lm_loss_sum(fused, data)[0])
        fused.merge_adapter()
        assert float(lm_loss_sum(fused, data)[0]) == pytest.approx(before, abs=1e-4)
    dora, fused_dora = peft_model(use_dora=True), peft_model(use_dora=True)
    fuse_lora(fused_dora)
    assert not any(m._fusable() for m in fused_dora.modules() if isinstance(m, FusedLoraLinear))
    assert float(lm_loss_sum(fused_dora, data)[0]) == pytest.approx(float(lm_loss_sum(dora, data)[0]), abs=1e-5)
