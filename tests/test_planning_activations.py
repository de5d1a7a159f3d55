"""The activation formulas against what autograd really keeps for the backward pass, on the CPU.

A forward pass of a small model (Llama, Qwen2, Phi shapes) with LoRA records every tensor it saves for the
backward pass (``torch.autograd.graph.saved_tensors_hooks``); those still alive when the forward pass ends, less the
parameters, are what the planner's ``activations`` term (and the log-softmax of the loss) must account for.
"""

import contextlib
import weakref

import pytest
import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from llmft.adapters import apply_lora
from llmft.hardware import attention_kernel, weights_dtype
from llmft.loss import right_padded
from llmft.planning import activations as act
from llmft.planning.arch import from_config
from llmft.planning.setup import LoraSpec, Setup

SHAPE = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
             vocab_size=300)
CASES = {
    "fp32": {},
    "bf16 autocast": dict(precision="bf16"),
    "nf4": dict(quantization="nf4"),
    "nf4 + bf16 autocast, all-linear": dict(quantization="nf4", precision="bf16", targets="all-linear"),
    "all-linear": dict(targets="all-linear"),
    "dropout 0, bf16": dict(dropout=0.0, precision="bf16"),
    "bf16, 200 tokens (flash kernel)": dict(precision="bf16", seq=200),
    "bf16, all-linear, micro-batch 1 (math kernel, no mask)": dict(precision="bf16", batch=1, targets="all-linear"),
    "eager attention": dict(attn="eager"),
    "micro-batch 1 (no mask, GQA kept)": dict(batch=1),
    "mlp targets": dict(targets=("gate_proj", "down_proj")),
    "DoRA": dict(dora=True),
    "qwen2 (qkv bias)": dict(model_type="qwen2"),
    "phi, resid dropout, all-linear": dict(model_type="phi", num_key_value_heads=6, resid_pdrop=0.1,
                                           targets="all-linear"),
    "fused, fp32, all-linear": dict(fused=True, dropout=0.0, targets="all-linear"),
    "fused, bf16, all-linear": dict(fused=True, dropout=0.0, precision="bf16", targets="all-linear"),
    "fused, bf16": dict(fused=True, dropout=0.0, precision="bf16"),
    "fused, qwen2 (qkv bias), bf16, all-linear": dict(fused=True, dropout=0.0, precision="bf16", model_type="qwen2",
                                                      targets="all-linear"),
    "fused, phi, bf16, all-linear": dict(fused=True, dropout=0.0, precision="bf16", model_type="phi",
                                         num_key_value_heads=6, targets="all-linear"),
    "fused, eager attention, bf16, all-linear": dict(fused=True, dropout=0.0, precision="bf16", attn="eager",
                                                     targets="all-linear"),
    "fused, dropout, fp32": dict(fused=True),
    "fused, dropout, bf16": dict(fused=True, precision="bf16"),
    "fused, dropout, bf16, all-linear": dict(fused=True, precision="bf16", targets="all-linear"),
}


def saved_storage_bytes(model, forward) -> int:
    """Bytes of the distinct non-parameter storages that ``forward()`` (which returns a loss) leaves saved for the
    backward pass; transients saved and already freed don't count."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen.append((weakref.ref(t), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    alive = {ptr: n for ref, ptr, n in seen if ref() is not None}
    assert loss.requires_grad
    return sum(alive.values())


def saved_bytes(model, ids, mask, autocast: bool) -> int:
    """``saved_storage_bytes`` of the model's own forward and loss, with the attention kernel that the training loop
    chooses for the batch (``llmft.hardware.attention_kernel``)."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    kernel = attention_kernel("bf16" if autocast else "fp32", "cpu", ids.shape[1])
    mask = None if right_padded(mask) else mask  # as llmft.loss calls the model
    with ctx, kernel:
        return saved_storage_bytes(model, lambda: model(input_ids=ids, attention_mask=mask, labels=ids).loss)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_the_activation_formulas_match_what_autograd_saves(tmp_path, case):
    c = CASES[case]
    model_type, batch, seq = c.get("model_type", "llama"), c.get("batch", 2), c.get("seq", 40)
    shape = {**SHAPE, **{k: c[k] for k in ("num_key_value_heads", "resid_pdrop") if k in c}}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shape)).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if c.get("precision") == "bf16" else torch.float32) \
        if c.get("quantization") else None
    dtype = "float32" if quant else weights_dtype(c.get("precision", "fp32"), "cpu")  # as the pipeline loads it
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=getattr(torch, dtype),
                                                 attn_implementation=c.get("attn", "sdpa"),
                                                 **({"device_map": {"": "cpu"}} if quant else {}))
    targets = c.get("targets", ("q_proj", "v_proj"))
    lora = LoraSpec(r=8, target_modules=targets, lora_dropout=c.get("dropout", 0.05), use_dora=c.get("dora", False))
    model = apply_lora(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=lora.lora_dropout,
                                         target_modules=targets if isinstance(targets, str) else list(targets),
                                         use_dora=lora.use_dora), gradient_checkpointing=False,
                       fused=c.get("fused", False))
    model.train()
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -3:] = 0 if batch > 1 else 1  # right padding, as training batches have
    measured = saved_bytes(model, ids, mask, autocast=c.get("precision") == "bf16")

    setup = Setup(arch=from_config({**shape, "model_type": model_type}, "test"), lora=lora, device="cpu",
                  precision=c.get("precision", "fp32"), quantization=c.get("quantization"), double_quant=True,
                  micro_batch_size=batch, seq_len=seq, attn_implementation=c.get("attn", "sdpa"),
                  fused_lora=c.get("fused", False))
    tokens = batch * seq
    predicted = (sum(act.activations_per_token(setup).values()) * tokens + act.weight_copies(setup)
                 + act.head_cast_bytes(setup) + 4 * SHAPE["vocab_size"] * tokens)  # + the loss's log-softmax
    assert predicted == pytest.approx(measured, rel=0.03), f"{case}: planned {predicted:,.0f}, saved {measured:,}"
