"""Training-time formatting: the model's chat template, with the loss on the assistant's tokens only.

A conversation is rendered turn by turn: the text the template adds before each assistant message (system, user
and tool turns, and the assistant header) is masked with -100; the assistant's reply and its end-of-turn token
are trained. The spans come from rendering growing prefixes of the conversation, so any template whose output
for a prefix is a prefix of its output for the whole (ChatML, Llama 3, Phi-3, Qwen2 ...) works unchanged.

A record that is a single assistant message (the ``text`` format: completion-only data) has no prompt: it is
tokenized as plain text plus EOS, without the template, trained on every token, and a text longer than
``max_seq_length`` becomes several consecutive windows rather than being cut.
"""

import bisect
import hashlib
import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import orjson
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from llmft.data.cache import seal_cache, usable_cache
from llmft.data.rendering import RenderError, render_spans, template_refusal
from llmft.errors import DataError

if TYPE_CHECKING:  # imported where a dataset is built: the parity check (llmft-chat) renders one conversation only
    from datasets import Dataset

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
CODE_VERSION = hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes()  # a change here invalidates
                                        for name in ("tokenize.py", "rendering.py"))).hexdigest()  # cached examples


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], max_seq_length: int,
                          train_on_prompt: bool = False,
                          tools: Optional[Sequence[dict]] = None) -> Dict[str, List[int]]:
    """Token ids and labels of one conversation, truncated to ``max_seq_length``.

    The whole rendering is tokenized at once, so the ids are exactly the template's; each token is labelled by
    the span its last character falls in. Labels are -100 outside the assistant's replies (unless
    ``train_on_prompt``); each reply ends with the template's end-of-turn token, or with the tokenizer's EOS
    when the template has none.
    """
    spans = render_spans(tokenizer, messages, tools)
    text = "".join(t for t, _ in spans)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = list(itertools.accumulate((len(t) for t, _ in spans[:-1]), initial=0))
    replies = [is_reply for _, is_reply in spans]
    markers = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids: List[int] = []
    labels: List[int] = []
    # the span of a token is the one its last character falls in (the last span that starts at or before it)
    span_of = [bisect.bisect_right(starts, max(end - 1, start)) - 1 for start, end in enc["offset_mapping"]]
    first_token = {}
    for k, (token, span) in enumerate(zip(enc["input_ids"], span_of)):
        is_reply = replies[span]
        first_token.setdefault(span, k)
        ids.append(token)
        labels.append(token if (is_reply or train_on_prompt) else IGNORE_INDEX)
        closes_reply = is_reply and (k + 1 == len(span_of) or span_of[k + 1] != span)
        if closes_reply and not markers.intersection(enc["input_ids"][first_token[span]:k + 1]):
            ids.append(tokenizer.eos_token_id)  # a template with no end-of-turn token
            labels.append(tokenizer.eos_token_id)
    return {"input_ids": ids[:max_seq_length], "labels": labels[:max_seq_length]}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, max_seq_length: int) -> List[Dict[str, List[int]]]:
    """Plain text (completion-only): the tokens plus EOS, cut into windows of ``max_seq_length``, all trained."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    windows = [ids[start:start + max_seq_length] for start in range(0, len(ids), max_seq_length)]
    return [{"input_ids": w, "labels": list(w)} for w in windows if len(w) > 1]


def is_plain_text(messages: Sequence[dict]) -> bool:
    """A record that is one assistant message and nothing else (the ``text`` format) is trained as plain text."""
    return len(messages) == 1 and messages[0]["role"] == "assistant"


def tokenize_record(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], max_seq_length: int,
                    train_on_prompt: bool = False,
                    tools: Optional[Sequence[dict]] = None) -> List[Dict[str, List[int]]]:
    """The training examples of one record: one conversation, or the windows of a plain text."""
    if is_plain_text(messages) and not tools:
        return tokenize_text(tokenizer, messages[0]["content"], max_seq_length)
    return [tokenize_conversation(tokenizer, messages, max_seq_length, train_on_prompt, tools)]


def tokenize_records(records: List[dict], tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                     train_on_prompt: bool = False, split: str = "train",
                     cache_dir: Optional[str] = None) -> Tuple["Dataset", int]:
    """Tokenize records into a ``datasets.Dataset`` of ``input_ids``/``labels``, dropping untrainable ones.

    A record with no trainable token left after truncation is dropped and counted. With ``cache_dir``, the
    result is an Arrow file under ``cache_dir/tokenized`` named by a fingerprint of the records, the tokenizer
    (vocabulary, chat template, special tokens), the settings and this module's code: a later run with the same
    inputs loads it instead of tokenizing again.

    Returns:
        The dataset (``id``, ``record`` (the record's position), ``input_ids``, ``labels``) and the number of
        records dropped.

    Raises:
        DataError: no record of the split keeps a trainable token, or the chat template refuses a record.
    """
    def examples_of(stored: list) -> List[Dict[str, List[int]]]:
        messages, tools = stored[:2]
        return [e for e in tokenize_record(tokenizer, messages, max_seq_length, train_on_prompt, tools)
                if any(t != IGNORE_INDEX for t in e["labels"][1:])]

    return encode_records(records, tokenizer, examples_of, ("input_ids", "labels"), split, cache_dir,
                          max_seq_length, str(train_on_prompt))


def encode_records(records: List[dict], tokenizer: PreTrainedTokenizerBase, examples_of, columns: Sequence[str],
                   split: str, cache_dir: Optional[str], max_seq_length: int, *settings: str) -> Tuple["Dataset", int]:
    """Records through ``examples_of`` into a ``datasets.Dataset`` (``id``, ``record`` and ``columns``), cached.

    ``examples_of([messages, tools, rejected])`` returns a record's trainable examples (none: the record is dropped
    and counted). The cache file's name is a fingerprint of the records, the tokenizer, ``max_seq_length``,
    ``settings``, ``columns`` and this module's code.

    Raises:
        DataError: no record of the split gives an example, or the chat template refuses a record.
    """
    import datasets
    from datasets import Dataset

    def encode(batch: Dict[str, list], indices: List[int]) -> Dict[str, list]:
        out: Dict[str, list] = {"id": [], "record": [], **{c: [] for c in columns}}
        for record_id, index, conversation in zip(batch["id"], indices, batch["conversation"]):
            try:
                examples = examples_of(orjson.loads(conversation))
            except (TemplateError, RenderError) as exc:
                raise DataError(template_refusal(tokenizer, record_id, split, exc)) from None
            for example in examples:
                for key, value in (("id", record_id), ("record", index), *example.items()):
                    out[key].append(value)
        return out

    if not records:  # no validation split (data.val_ratio=0)
        ids = datasets.Sequence(datasets.Value("int64"))
        return Dataset.from_dict({"id": [], "record": [], **{c: [] for c in columns}}, features=datasets.Features(
            {"id": datasets.Value("string"), "record": datasets.Value("int64"), **{c: ids for c in columns}})), 0
    # as JSON: Arrow would give every message every key of every other (tool calls' arguments differ per record)
    raw = Dataset.from_list([{"id": r["id"], "conversation": orjson.dumps([r["messages"], r.get("tools"),
                                                                            r.get("rejected")])} for r in records])
    fingerprint = tokenization_fingerprint(records, tokenizer, max_seq_length, *settings, *columns)
    cache = Path(cache_dir).expanduser() / "tokenized" / f"{fingerprint}.arrow" if cache_dir else None
    cached = cache is not None and usable_cache(cache)
    encoded = raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                      new_fingerprint=fingerprint, cache_file_name=str(cache) if cache else None,
                      desc=f"Tokenizing {split}")
    if cache is not None and not cached:
        seal_cache(cache)
    if len(encoded) == 0:
        raise DataError(f"none of the {len(records)} {split} records keeps an assistant token within "
                        f"data.max_seq_length={max_seq_length}. Raise data.max_seq_length or shorten the prompts.")
    dropped = len(records) - len(set(encoded["record"]))
    log.info("Tokenized %s: %d records -> %d examples, %d dropped (no trainable token within %d)%s", split,
             len(records), len(encoded), dropped, max_seq_length,
             f"; loaded from the cache {cache}" if cached else f"; cached as {cache}" if cache else "")
    return encoded, dropped


def conversation_of(stored: bytes) -> Tuple[List[dict], Optional[List[dict]]]:
    """The messages and tools of a record as ``tokenize_records`` stores them (JSON)."""
    messages, tools = orjson.loads(stored)[:2]
    return messages, tools


def tokenization_fingerprint(records: Sequence[dict], tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                             *settings: Any) -> str:
    """A digest of everything the tokenized examples depend on (``settings``: the other options, as text)."""
    digest = hashlib.sha256()
    for part in (tokenizer_fingerprint(tokenizer), CODE_VERSION, str(max_seq_length), *map(str, settings)):
        digest.update(part.encode() + b"\0")
    for record in records:
        digest.update(orjson.dumps([record["id"], record["messages"], record.get("tools"), record.get("rejected")]))
    return digest.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of the tokenizer's vocabulary and rules, chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((type(tokenizer).__name__, tokenizer.chat_template, tokenizer.bos_token_id, tokenizer.eos_token_id,
                  tokenizer.pad_token_id, sorted(str(t) for t in tokenizer.added_tokens_decoder.values())))
    return hashlib.sha256((rules + extra).encode()).hexdigest()
