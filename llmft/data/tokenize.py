"""Training-time formatting: the model's chat template, with the loss on the assistant's tokens only.

A conversation is rendered turn by turn: the text the template adds before each assistant message (system, user
and tool turns, and the assistant header) is masked with -100; the assistant's reply and its end-of-turn token
are trained. The spans come from rendering growing prefixes of the conversation, so any template whose output
for a prefix is a prefix of its output for the whole (ChatML, Llama 3, Phi-3, Qwen2 ...) works unchanged.
"""

from typing import Dict, List, Sequence, Tuple

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llmft.errors import DataError

IGNORE_INDEX = -100


def _common_prefix(a: str, b: str, markers: Sequence[str]) -> int:
    """Length of the common prefix of ``a`` and ``b``, never ending inside a special token of either."""
    end = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    moved = True
    while moved:  # "<|endoftext|>" and "<|user|>" share "<|": step back to where the token starts
        moved = False
        for text in (a, b):
            for marker in markers:
                start = text.find(marker, max(0, end - len(marker) + 1))
                if 0 <= start < end < start + len(marker):
                    end, moved = start, True
    return end


def render_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> List[Tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_assistant_reply)`` spans that concatenate to it.

    Reply ``i`` starts where the template's prompt for it (``messages[:i]`` plus the generation prompt) ends,
    and runs as far as the rendering of ``messages[:i + 1]`` agrees with the whole conversation's: so the
    reply's end-of-turn marker is trained, and a marker that a template adds only at the very end of a
    conversation (Phi-3 appends EOS) is trained only there.
    """
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    markers = [str(t) for t in tokenizer.added_tokens_decoder.values()]
    spans, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        end = _common_prefix(upto, full, markers)
        if not full.startswith(prompt) or len(prompt) < done or end <= len(prompt):
            raise DataError("the tokenizer's chat template renders a conversation's prefix differently from the "
                            "conversation itself, so the assistant's tokens cannot be located. Use a template "
                            "that renders turns in order (set tokenizer.chat_template).")
        spans += [(full[done:len(prompt)], False), (full[len(prompt):end], True)]
        done = end
    if done < len(full):
        spans.append((full[done:], False))
    return spans


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], max_seq_length: int,
                          train_on_prompt: bool = False) -> Dict[str, List[int]]:
    """Token ids and labels of one conversation, truncated to ``max_seq_length``.

    The whole rendering is tokenized at once, so the ids are exactly the template's; each token is labelled by
    the span its last character falls in. Labels are -100 outside the assistant's replies (unless
    ``train_on_prompt``); each reply ends with the template's end-of-turn token, or with the tokenizer's EOS
    when the template has none.
    """
    spans = render_spans(tokenizer, messages)
    text = "".join(t for t, _ in spans)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds, pos = [], 0
    for span_text, is_reply in spans:
        bounds.append((pos, pos + len(span_text), is_reply))
        pos += len(span_text)
    markers = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ids: List[int] = []
    labels: List[int] = []
    span_of = [next((i for i, (s, e, _) in enumerate(bounds) if s <= max(end - 1, start) < e), len(bounds) - 1)
               for start, end in enc["offset_mapping"]]
    for k, (token, span) in enumerate(zip(enc["input_ids"], span_of)):
        is_reply = bounds[span][2]
        ids.append(token)
        labels.append(token if (is_reply or train_on_prompt) else IGNORE_INDEX)
        closes_reply = is_reply and (k + 1 == len(span_of) or span_of[k + 1] != span)
        if closes_reply and not markers.intersection(enc["input_ids"][span_of.index(span):k + 1]):
            ids.append(tokenizer.eos_token_id)  # a template with no end-of-turn token
            labels.append(tokenizer.eos_token_id)
    return {"input_ids": ids[:max_seq_length], "labels": labels[:max_seq_length]}


def tokenize_records(records: List[dict], tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                     train_on_prompt: bool = False, split: str = "train") -> Tuple[Dataset, int]:
    """Tokenize records into a ``datasets.Dataset`` of ``input_ids``/``labels``, dropping untrainable ones.

    A record with no trainable token left after truncation is dropped and counted.

    Returns:
        The dataset and the number of records dropped.

    Raises:
        DataError: no record of the split keeps a trainable token.
    """
    def encode(batch: Dict[str, list]) -> Dict[str, list]:
        out = [tokenize_conversation(tokenizer, m, max_seq_length, train_on_prompt) for m in batch["messages"]]
        return {"input_ids": [o["input_ids"] for o in out], "labels": [o["labels"] for o in out]}

    raw = Dataset.from_list([{"id": r["id"], "messages": r["messages"]} for r in records])
    encoded = raw.map(encode, batched=True, remove_columns=["messages"], desc=f"Tokenizing {split}")
    kept = encoded.filter(lambda labels: any(t != IGNORE_INDEX for t in labels[1:]), input_columns="labels")
    if len(kept) == 0:
        raise DataError(f"none of the {len(records)} {split} records keeps an assistant token within "
                        f"data.max_seq_length={max_seq_length}. Raise data.max_seq_length or shorten the prompts.")
    return kept, len(encoded) - len(kept)
