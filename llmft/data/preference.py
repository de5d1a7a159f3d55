"""Preference data: records with a ``chosen`` and a ``rejected`` reply, converted to ``PreferencePair``.

The shapes read (each named in messages by ``shape_of``):

- LLaMA-Factory's DPO ShareGPT: ``{"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}``
  (optional ``system`` and ``tools`` beside them);
- hh-rlhf as message lists (TRL's implicit prompt): ``{"chosen": [messages], "rejected": [messages]}``, the two
  conversations sharing all but their last message;
- TRL's ``{"prompt", "chosen", "rejected"}``: each a string, or a list of messages;
- Alpaca-style ``{"instruction", "input", "chosen", "rejected"}`` with text replies.

Supervised training refuses such a file under ``data_format=auto`` (see ``llmft.data.formats.detect``);
``data_format=chosen`` trains on the prompt and the chosen reply. A preference objective (``objective=dpo``) reads
it with ``preference``: a pair record is a conversation record (prompt + chosen reply) with a ``rejected`` reply.
"""

from typing import Any, Dict, List, Optional

from llmft.data.chats import messages as read_messages
from llmft.data.chats import sharegpt
from llmft.data.parts import Reject, as_object, converter, text_only, tool_list
from llmft.data.records import PreferencePair

KEYS = ("chosen", "rejected")


def shape_of(row: dict) -> str:
    """A few words naming the preference shape of ``row``."""
    if "messages" in row:
        return "conversation records with a rejected reply (llmft-prepare's pairs)"
    if "conversations" in row:
        return "ShareGPT conversations with chosen/rejected replies (LLaMA-Factory DPO)"
    if "prompt" in row:
        return "prompt/chosen/rejected (TRL)"
    if "instruction" in row:
        return "instruction with chosen/rejected replies (Alpaca DPO)"
    return "chosen/rejected conversations (hh-rlhf)"


def preference_pair(row: Any, *, tools: Optional[str] = "tools") -> PreferencePair:
    """The pair of one preference record, whatever its shape.

    Raises:
        Reject: a part is missing or malformed, or the two replies do not follow one shared prompt.
    """
    row = as_object(row)
    text_only(row)
    if "conversations" in row:
        prompt = _conversation(sharegpt(row, label=None, tools=None))
        replies = [_reply(sharegpt({"conversations": [row.get(k)]}, label=None, tools=None), k) for k in KEYS]
    elif "messages" in row and "chosen" not in row:  # a pair record (data_format=preference, llmft-prepare)
        conversation = _conversation(read_messages({"messages": row.get("messages")}, label=None, tools=None),
                                     "messages")
        prompt, replies = conversation[:-1], [conversation[-1], _side(row.get("rejected"), "rejected")]
    elif "chosen" in row and isinstance(row["chosen"], list) and "prompt" not in row:
        sides = [_conversation(read_messages({"messages": row.get(k)}, label=None, tools=None), k) for k in KEYS]
        prompt = sides[0][:-1]
        if sides[1][:-1] != prompt:
            raise Reject("the chosen and rejected conversations differ before their last message (no shared prompt)")
        replies = [side[-1] for side in sides]
    else:
        prompt = _prompt(row)
        replies = [_side(row.get(k), k) for k in KEYS]
    for reply, key in zip(replies, KEYS):
        if reply.get("role") != "assistant":
            raise Reject(f"the {key} reply is not from the assistant")
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise Reject("the prompt must end with a user (or tool) message")
    return PreferencePair(prompt, replies[0], replies[1], tool_list(row, tools))


def _conversation(result: Any, key: str = "conversations") -> List[Dict[str, Any]]:
    msgs = result["messages"] if isinstance(result, dict) else result
    if not msgs:
        raise Reject(f"'{key}' is empty")
    return msgs


def _reply(result: Any, key: str) -> Dict[str, Any]:
    msgs = _conversation(result, key)
    if len(msgs) != 1:
        raise Reject(f"'{key}' must be one reply")
    return msgs[0]


def _prompt(row: dict) -> List[Dict[str, Any]]:
    if "prompt" in row:
        value = row["prompt"]
        if isinstance(value, list):
            return _conversation(read_messages({"messages": value}, label=None, tools=None), "prompt")
        if isinstance(value, str) and value.strip():
            return [{"role": "user", "content": value}]
        raise Reject("'prompt' is neither text nor a list of messages")
    instruction, extra = row.get("instruction"), row.get("input")
    if not isinstance(instruction, str) or not instruction.strip():
        raise Reject("no 'prompt', 'conversations' or 'instruction' before the replies")
    text = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    system = row.get("system")
    return ([{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []) + \
        [{"role": "user", "content": text}]


def _side(value: Any, key: str) -> Dict[str, Any]:
    if isinstance(value, str) and value.strip():
        return {"role": "assistant", "content": value}
    if isinstance(value, (list, dict)):
        return _reply(read_messages({"messages": value if isinstance(value, list) else [value]}, label=None,
                                    tools=None), key)
    raise Reject(f"'{key}' is neither text nor a list with one assistant message")


@converter("chosen", "rejected")
def chosen(row: Any, *, tools: Optional[str] = "tools") -> Any:
    """Preference records trained as supervised data: the prompt followed by the ``chosen`` reply.

    Args:
        row: one preference record, in any shape of this module.
        tools: key of optional function definitions; null: none.

    Returns:
        The messages, or ``{"messages", "tools"}``.

    Raises:
        Reject: see ``preference_pair``.
    """
    pair = preference_pair(row, tools=tools)
    conversation = pair.conversation("chosen")
    return {"messages": conversation, "tools": pair.tools} if pair.tools else conversation


@converter("rejected")
def preference(row: Any, *, tools: Optional[str] = "tools") -> Any:
    """Preference records read as pairs, for a preference objective (``objective=dpo``): the prompt and the chosen
    reply as the record's messages, the rejected reply beside them.

    Args:
        row: one preference record, in any shape of this module (or a pair record that ``llmft-prepare`` wrote).
        tools: key of optional function definitions; null: none.

    Returns:
        ``{"messages", "rejected", "tools"}``.

    Raises:
        Reject: see ``preference_pair``.
    """
    pair = preference_pair(row, tools=tools)
    return {"messages": pair.conversation("chosen"), "rejected": pair.rejected, "tools": pair.tools}


preference.pairs = True  # llmft.data.formats.reads_pairs
