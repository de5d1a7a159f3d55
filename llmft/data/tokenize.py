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


def render_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> List[Tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_assistant_reply)`` spans, in order."""
    spans, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError("the tokenizer's chat template renders a conversation's prefix differently from the "
                            "conversation itself, so the assistant's tokens cannot be located. Use a template "
                            "that renders turns in order (set tokenizer.chat_template).")
        spans += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return spans


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], max_seq_length: int,
                          train_on_prompt: bool = False) -> Dict[str, List[int]]:
    """Token ids and labels of one conversation, truncated to ``max_seq_length``.

    Labels are -100 outside the assistant's replies (unless ``train_on_prompt``); each reply ends with the
    tokenizer's EOS (added if the template does not put it there).
    """
    ids: List[int] = []
    labels: List[int] = []
    for text, is_reply in render_spans(tokenizer, messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_reply and tokenizer.eos_token_id not in piece:
            piece = piece + [tokenizer.eos_token_id]
        ids += piece
        labels += piece if (is_reply or train_on_prompt) else [IGNORE_INDEX] * len(piece)
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
