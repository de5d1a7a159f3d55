"""LoRA adapters on a loaded model, with k-bit preparation when the base weights are quantized."""

import logging

import torch

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from llmft.fused_lora import fuse_lora
from llmft.quantization import is_quantized
from llmft.quiet import peft_on_transformers5

log = logging.getLogger(__name__)
CHECKPOINTING = {"use_reentrant": False}


def _keep_4bit_layout_trainable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight on its first forward without
    gradients (an evaluation) and never unpacks it when training resumes; that kernel has no backward, so every
    LoRA layer below it then gets a zero gradient and QLoRA silently stops learning (seen here: grad_norm 0.000 on
    every step after the base evaluation). Evaluation and training then use the same 4-bit matmul.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _trainable_in_fp32(model: PeftModel) -> None:
    """Keep every trainable parameter in float32, as the optimizer and fp16's loss scaler need.

    peft casts the LoRA matrices to float32 itself (``autocast_adapter_dtype``), but the copies that
    ``lora.modules_to_save`` trains (an ``lm_head``, the embeddings) keep the base's dtype: loaded in float16 on a
    GPU, the scaler refuses them on the first step ("Attempting to unscale FP16 gradients"), and in bfloat16 their
    small updates round away. Autocast still computes with them in 16 bits.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


def apply_lora(model: PreTrainedModel, lora_config: LoraConfig, gradient_checkpointing: bool,
               fused: bool = False) -> PeftModel:
    """Wrap ``model`` with trainable LoRA adapters; only the adapters require grad afterwards.

    Quantized bases go through ``peft.prepare_model_for_kbit_training`` (norms in fp32, input grads on), which is
    what makes QLoRA train stably.

    Args:
        model: the loaded base model.
        lora_config: the adapters' configuration (``conf/lora/*.yaml``).
        gradient_checkpointing: recompute activations in the backward pass.
        fused: compute plain LoRA layers with their base as one function (``llmft.fused_lora``).

    Returns:
        The ``PeftModel``.
    """
    if is_quantized(model):
        _keep_4bit_layout_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=CHECKPOINTING)
    elif gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINTING)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
        model.enable_input_require_grads()
    model.config.use_cache = False
    with peft_on_transformers5():
        peft_model = get_peft_model(model, lora_config)
    _trainable_in_fp32(peft_model)
    if fused:
        fuse_lora(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA r=%s on %s: %s trainable of %s parameters (%.3f%%)", lora_config.r,
             sorted(peft_model.peft_config["default"].target_modules), f"{trainable:,}", f"{total:,}",
             100 * trainable / total)
    return peft_model
