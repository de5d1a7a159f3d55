"""A tiny random-weight Llama built from a config in-process: the test subject that needs no download.

The weights are written once to a folder under the cache and loaded back through ``from_pretrained``, so the
tiny model goes through the very path a real one does, bitsandbytes quantization included.
"""

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmft.data.tokenizer import open_tokenizer
from llmft.models.loading import LoadedModel, load_from

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_LEVEL_NAME = "the tiny model's byte-level tokenizer"  # its name in messages (it has no folder or hub id)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + 3 ChatML special tokens, no merges) with a ChatML chat template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None, chat_template=CHATML_TEMPLATE,
                                   name_or_path=BYTE_LEVEL_NAME)


def is_tiny(model: Mapping[str, Any]) -> bool:
    """Whether a ``model`` option builds the tiny random model (its ``_target_`` is ``build_tiny``, under any import
    path): it is built from its ``arch``, with no files to read figures or a tokenizer from."""
    from hydra.utils import get_method

    return get_method(str(model.get("_target_"))) is build_tiny


def build_tiny(
    name_or_path: str = "tiny-llama",
    *,
    arch: Mapping[str, Any],
    tokenizer: Optional[str] = None,
    init_seed: int = 0,
    quantization_config: Any = None,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: Optional[str] = None,
) -> LoadedModel:
    """Build (once) and load a random-weight ``LlamaForCausalLM`` from ``arch``.

    Args:
        name_or_path: a display name.
        arch: ``LlamaConfig`` keyword arguments (``hidden_size``, ``num_hidden_layers``, ...); the vocabulary
            size comes from the tokenizer.
        tokenizer: a tokenizer folder; None builds a byte-level ChatML tokenizer in-process.
        init_seed: seed of the random weights, so that every run starts from the same tiny model.
        quantization_config: a ``transformers.BitsAndBytesConfig``, or None.
        dtype: torch dtype name of the weights that are not quantized.
        device: ``cpu`` or ``cuda``.
        cache_dir: where the built model is kept; None: a temporary folder.

    Returns:
        The loaded model and tokenizer.
    """
    tok = open_tokenizer(tokenizer, key="model.tokenizer", trust_remote_code=False) if tokenizer \
        else byte_level_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    spec = json.dumps({"arch": dict(arch), "tokenizer": tokenizer, "seed": init_seed}, sort_keys=True, default=str)
    root = Path(cache_dir).expanduser() / "models" if cache_dir else Path(tempfile.mkdtemp(prefix="llmft-tiny-"))
    folder = root / f"tiny-{hashlib.sha1(spec.encode()).hexdigest()[:12]}"
    if not (folder / "config.json").exists():
        config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id, **arch)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
        with torch.random.fork_rng(devices=[]):  # leave the run's random state as it was
            torch.manual_seed(init_seed)
            LlamaForCausalLM(config).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not folder.exists():  # another process may have built the same model meanwhile
            tmp.rename(folder)
    loaded = load_from(str(folder), name=name_or_path, quantization_config=quantization_config, dtype=dtype,
                       device=device)
    return dataclasses.replace(loaded, random_weights=True)
