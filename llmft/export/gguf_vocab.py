"""The tokenizer in GGUF metadata: a byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``).

Tokens and their types (control for special tokens, user-defined for other added ones, unused for the rows of
the embedding past the vocabulary) come from the tokenizer itself; the merges, the BOS/EOS/pad ids, the
add-BOS flag and the chat template come from ``gguf.SpecialVocab`` reading the tokenizer's saved files. The
end-of-turn token the model was trained to emit is written as ``tokenizer.ggml.eot_token_id`` when it is not
the EOS, so that llama.cpp stops there too.
"""

import json
import tempfile
from pathlib import Path
from typing import Callable, Optional

import gguf
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

from llmft.export.gguf_writer import GGUFError

SPLIT_NAMES = {regex: name for name, regex in reversed(GGUF_PRE_TOKENIZER_SPLITS.items())}


def vocab_writer(tokenizer, vocab_size: int, eot_id: Optional[int]) -> Callable[[gguf.GGUFWriter], None]:
    """A function that adds ``tokenizer``'s metadata to a ``GGUFWriter``, padded to ``vocab_size`` tokens.

    Raises:
        GGUFError: a tokenizer that is not byte-level BPE (a SentencePiece vocabulary, for instance).
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in json.dumps(decoder):
        raise GGUFError(
            f"GGUF export writes byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2), and this one is "
            f"{model.get('type')} with a {decoder.get('type')} decoder (a SentencePiece-style vocabulary such as "
            "TinyLlama's or Phi-3's). Export the merged model (llmft-export RUN --merge) and convert it with "
            "llama.cpp's convert_hf_to_gguf.py; nothing was written.")
    with tempfile.TemporaryDirectory(prefix="llmft-gguf-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=True, n_vocab=vocab_size)
    special.load_merges = bool(special.merges)  # no merges is this vocabulary's nature, not a loading failure
    tokens, types = token_table(tokenizer, vocab_size)
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))

    def add(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if not special.merges:  # a vocabulary with no merges: readers then rebuild them from scores (none)
            writer.add_token_scores([0.0] * len(tokens))
        special.add_to_gguf(writer, quiet=True)
        if "bos" not in special.add_special_token:
            writer.add_add_bos_token(adds_bos(tokenizer))
        if eot_id is not None and eot_id != tokenizer.eos_token_id:
            writer.add_eot_token_id(eot_id)

    return add


def token_table(tokenizer, vocab_size: int):
    """Token strings (byte-level spelling; added tokens as written) and ``gguf.TokenType`` per id."""
    added = tokenizer.added_tokens_decoder
    spelled = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    tokens, types = [], []
    for i in range(vocab_size):
        token = spelled[i] if i < len(spelled) else None
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def pre_tokenizer_name(pre: Optional[dict]) -> str:
    """llama.cpp's name for the way the text is split before BPE (``tokenizer.ggml.pre``)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    for step in steps:
        regex = (step.get("pattern") or {}).get("Regex")
        if step.get("type") == "Split" and regex in SPLIT_NAMES:
            return SPLIT_NAMES[regex]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    return "default"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before a text (llama.cpp's ``add_bos_token``)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
