"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio), written through the ``gguf`` package's API.

The architecture's hyper-parameters go under its own keys (``llama.block_count``, ``qwen2.context_length``...),
tensor names come from ``gguf``'s name map for the architecture, and the weights are stored as ``f32``, ``f16``,
``bf16`` or ``q8_0`` (``gguf.quants``); norms and biases stay f32, as llama.cpp keeps them. Llama 3's RoPE
scaling (``rope_type: llama3``) goes, as llama.cpp reads it, into a ``rope_freqs`` tensor: one factor per
frequency that llama.cpp divides it by. The tokenizer's metadata is written by :mod:`llmft.export.gguf_vocab`.
"""

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import gguf
import numpy as np
import torch

from llmft.errors import LlmftError

logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its INFO lines: endianness, tensor counts
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
ROPE_TYPES = {"llama": ("default", "llama3"), "qwen2": ("default",)}  # rope_type each architecture is written with
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
TYPES = {  # --gguf choice: (tensor type of matrices, file type written to general.file_type)
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


class GGUFError(LlmftError):
    """A model that cannot be written as GGUF, or a GGUF that failed its check."""


def check_supported(config) -> None:
    """Raise ``GGUFError`` for an architecture or a RoPE variant this writer does not handle."""
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if config.model_type not in ARCHITECTURES or rope not in ROPE_TYPES[config.model_type]:
        what = f"architecture {config.model_type!r}" if config.model_type not in ARCHITECTURES \
            else f"RoPE scaling {rope!r}"
        raise GGUFError(
            f"GGUF export does not support the {what}: it writes {' and '.join(ARCHITECTURES)} models with plain "
            "RoPE (SmolLM2, TinyLlama, Qwen2/Qwen2.5) or, for llama, Llama 3's llama3 RoPE scaling (Llama 3.2). "
            "Export the adapter or the merged model instead (llmft-export RUN --merge) and convert that with llama.cpp's "
            "convert_hf_to_gguf.py; nothing was written.")


def write_gguf(model, path: Path, qtype: str, name: str, add_vocab: Callable) -> None:
    """Write ``model`` (a merged ``*ForCausalLM`` in float32) to ``path``.

    Args:
        model: the merged model; its config decides the architecture keys.
        path: the ``.gguf`` file to write.
        qtype: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        name: ``general.name``.
        add_vocab: ``f(writer)`` that adds the tokenizer's metadata (``gguf_vocab.vocab_writer``).
    """
    config = model.config
    check_supported(config)
    arch = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    _hyperparameters(writer, config, name, TYPES[qtype][1])
    add_vocab(writer)
    for gguf_name, array, raw_type in _tensors(model, arch, TYPES[qtype][0]):
        writer.add_tensor(gguf_name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer: gguf.GGUFWriter, config, name: str, file_type) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _tensors(model, arch, matrix_type) -> Iterable[Tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """``(gguf name, data, raw type)`` of each weight: llama's q/k rows reordered, matrices in ``matrix_type``."""
    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = _state_dict(model)
    for hf_name, tensor in state.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFError(f"the weight {hf_name} has no GGUF name for {config.model_type}; nothing was written.")
        data = tensor.detach().float().cpu().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
            groups = config.num_attention_heads if ".attn_q." in gguf_name else config.num_key_value_heads
            data = _rope_rows(data, groups)
        yield (gguf_name, *_encode(data, matrix_type))
    factors = rope_factors(model)
    if factors is not None:
        yield ROPE_FREQS, factors, gguf.GGMLQuantizationType.F32


def rope_factors(model) -> Optional[np.ndarray]:
    """Llama 3 RoPE scaling as llama.cpp's ``rope_freqs``: each plain RoPE frequency divided by transformers' own
    llama3-scaled one (None for plain RoPE)."""
    rotary = model.model.rotary_emb
    if rotary.rope_type == "default":
        return None
    plain, _ = rotary.compute_default_rope_parameters(model.config)
    return (plain.float() / rotary.original_inv_freq.float().cpu()).numpy().astype(np.float32)


def apply_rope_factors(model, path: Path) -> bool:
    """Divide the frequencies of ``model`` (read from ``path`` by transformers, whose GGUF reader builds plain RoPE
    and leaves ``rope_freqs`` unread) by the file's factors, as llama.cpp does; True when the file has them."""
    tensor = next((t for t in gguf.GGUFReader(path).tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return False
    rotary = model.model.rotary_emb
    factors = torch.from_numpy(np.array(tensor.data, dtype=np.float32)).to(rotary.inv_freq.device)
    for buffer in (rotary.inv_freq, rotary.original_inv_freq):
        buffer.div_(factors)
    return True


def _state_dict(model) -> Dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    return state


def _rope_rows(weights: np.ndarray, groups: int) -> np.ndarray:
    """Reorder q/k rows from transformers' half-split RoPE layout to llama.cpp's interleaved pairs.

    The inverse of transformers' ``LlamaTensorProcessor._reverse_permute_weights``, which reads them back.
    """
    half = weights.shape[0] // groups // 2
    return weights.reshape(groups, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encode(data: np.ndarray, matrix_type) -> Tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Matrices in ``matrix_type`` (f32 when a row does not fill whole quantization blocks); vectors in f32."""
    block = gguf.GGML_QUANT_SIZES[matrix_type][0]
    if data.ndim < 2 or matrix_type == gguf.GGMLQuantizationType.F32 or data.shape[-1] % block:
        return np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.F32
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), matrix_type), matrix_type
