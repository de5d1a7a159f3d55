"""The tokenizer in GGUF metadata: byte-level BPE (``tokenizer.ggml.model = gpt2``: SmolLM2, Llama 3, Qwen2) or
SentencePiece-style BPE with byte fallback (``llama``: TinyLlama, scored so that llama.cpp merges as the BPE does).

Tokens and their types (control for special tokens, user-defined for other added ones, unused for the rows of
the embedding past the vocabulary) come from the tokenizer itself; the merges, the BOS/EOS/pad ids, the
add-BOS flag and the chat template come from ``gguf.SpecialVocab`` reading the tokenizer's saved files. The
end-of-turn token the model was trained to emit is written as ``tokenizer.ggml.eot_token_id`` when it is not
the EOS, so that llama.cpp stops there too.
"""

import json
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import gguf
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

from llmft.export.gguf_writer import GGUFError

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte-fallback pieces
SPLIT_NAMES = {regex: name for name, regex in reversed(GGUF_PRE_TOKENIZER_SPLITS.items())}


def vocab_writer(tokenizer, vocab_size: int, eot_id: Optional[int]) -> Callable[[gguf.GGUFWriter], None]:
    """A function that adds ``tokenizer``'s metadata to a ``GGUFWriter``, padded to ``vocab_size`` tokens.

    Raises:
        GGUFError: a tokenizer that is neither byte-level BPE nor SentencePiece-style BPE.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = tokenizer_kind(spec)
    with tempfile.TemporaryDirectory(prefix="llmft-gguf-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=True, n_vocab=vocab_size)
    special.load_merges = bool(special.merges)  # no merges is this vocabulary's nature, not a loading failure
    tokens, types = token_table(tokenizer, vocab_size)

    def add(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(kind)
        writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")) if kind == "gpt2" else "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if kind == "llama":
            writer.add_token_scores(piece_scores(spec, tokens, types))
            writer.add_add_space_prefix(adds_space_prefix(spec))
        elif not special.merges:  # a vocabulary with no merges: readers then rebuild them from scores (none)
            writer.add_token_scores([0.0] * len(tokens))
        special.add_to_gguf(writer, quiet=True)
        if "bos" not in special.add_special_token:
            writer.add_add_bos_token(adds_bos(tokenizer))
        if eot_id is not None and eot_id != tokenizer.eos_token_id:
            writer.add_eot_token_id(eot_id)

    return add


def tokenizer_kind(spec: dict) -> str:
    """``gpt2`` for byte-level BPE, ``llama`` for SentencePiece-style BPE (byte fallback); else ``GGUFError``."""
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback") and "ByteLevel" in json.dumps(decoder):
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    raise GGUFError(
        f"GGUF export writes BPE tokenizers - byte-level (SmolLM2, Llama 3, Qwen2) or SentencePiece-style with "
        f"byte fallback (TinyLlama) - and this one is {model.get('type')} with a {decoder.get('type')} decoder. "
        "Export the merged model (llmft-export RUN --merge) and convert it with llama.cpp's "
        "convert_hf_to_gguf.py; nothing was written.")


def piece_scores(spec: dict, tokens: List[str], types: List[int]) -> List[float]:
    """SentencePiece-style scores with which llama.cpp merges as the tokenizer's BPE does.

    llama.cpp joins, again and again, the adjacent pair whose joined piece scores highest; transformers applies the
    lowest-ranked merge first. So a piece scores minus the rank of the first merge that makes it, and a piece no
    merge makes scores below them all (single characters and byte or control tokens, which nothing joins into,
    0). Scores in vocabulary order instead joined runs of spaces differently from training: code indented by four
    spaces tokenized otherwise in llama.cpp (README, GGUF).
    """
    rank: Dict[str, int] = {}
    for r, merge in enumerate((spec.get("model") or {}).get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    unmade = -float(len(rank) + 1)
    return [(-float(rank[t] + 1) if t in rank else 0.0 if len(t) == 1 else unmade)
            if kind == gguf.TokenType.NORMAL else 0.0 for t, kind in zip(tokens, types)]


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
            types.append(gguf.TokenType.BYTE if BYTE_TOKEN.fullmatch(token) and i not in added else
                         gguf.TokenType.NORMAL if i not in added else
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
        return "gpt-2"  # llama.cpp's name for GPT-2's split (LLAMA_VOCAB_PRE_TYPE_GPT2); "gpt2" is refused
    return "default"


def llama_cpp_encoder(tokenizer) -> Optional[Callable[[str], List[int]]]:
    """How llama.cpp encodes a text (special tokens parsed) where it follows a rule other than transformers': for a
    SentencePiece-style vocabulary whose Metaspace pre-tokenizer puts the word-boundary mark before the first word
    only (``prepend_scheme: first``, Phi-3's). llama.cpp starts the text after every special token with a space,
    which becomes that mark; Llama 2's older normalizer prepends it there too, and llama.cpp agrees with it
    (README, GGUF). None for every other tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if tokenizer_kind(spec) != "llama" or '"prepend_scheme": "first"' not in json.dumps(spec.get("pre_tokenizer")):
        return None
    specials = sorted((t.content for t in tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
    split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    def encode(text: str) -> List[int]:
        ids: List[int] = []
        for i, piece in enumerate(split.split(text) if split else [text]):
            if i % 2:  # the special tokens the split keeps
                ids += tokenizer.convert_tokens_to_ids([piece])
            elif piece:
                ids += tokenizer(" " + piece, add_special_tokens=False)["input_ids"]
        return ids

    return encode


def adds_space_prefix(spec: dict) -> bool:
    """Whether SentencePiece-style text starts with the word-boundary mark (Metaspace, or a Prepend normalizer)."""
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer")])
    return '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text or '"Prepend"' in text


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before a text (llama.cpp's ``add_bos_token``)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
