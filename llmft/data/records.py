"""The one conversation schema every input format is converted to, and the preference pair built from it.

``{"id": str, "messages": [...], "tools": [...] (optional), "meta": {"source", "tags", "split"}}``.

A message is ``{"role", "content"}``: roles system, user, assistant and tool; a system message only first; the last
message from the assistant; no empty content. An assistant message may also carry ``tool_calls`` (``[{"type":
"function", "function": {"name", "arguments": {...}}}]``, as ``apply_chat_template`` takes them; its content may then
be empty) and ``"train": false`` (a reply kept as context but not trained: LLaMA-Factory's ``loss_weight: 0``).
``tools`` holds the JSON-schema function definitions the conversation may call, passed to the chat template as
``tools=``. Ids are unique within a file. A preference pair adds ``"rejected"``: the assistant message that the
last one (the chosen reply) is preferred to.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

ROLES = ("system", "user", "assistant", "tool")
_ROLES = frozenset(ROLES)


@dataclass
class PreferencePair:
    """One preference record, converted: a shared prompt conversation and two assistant replies to it.

    Every preference shape llmft reads (``chosen``/``rejected`` beside ShareGPT ``conversations`` or a ``prompt``,
    hh-rlhf's two full message lists, TRL's ``{prompt, chosen, rejected}``) becomes this; supervised training on the
    chosen side is ``prompt + [chosen]`` (``data_format=chosen``), and a preference objective (DPO) scores
    ``chosen`` against ``rejected`` after the same ``prompt``.

    Attributes:
        prompt: the conversation before the replies (system, user, assistant and tool messages of the schema);
            it ends with a user or tool message.
        chosen: the preferred assistant message.
        rejected: the dispreferred assistant message.
        tools: function definitions, as in a conversation record.
    """

    prompt: List[Dict[str, Any]]
    chosen: Dict[str, Any]
    rejected: Dict[str, Any]
    tools: Optional[List[Dict[str, Any]]] = field(default=None)

    def conversation(self, side: str = "chosen") -> List[Dict[str, Any]]:
        """The messages of one side: the prompt followed by the ``chosen`` (or ``rejected``) reply."""
        return [*self.prompt, self.chosen if side == "chosen" else self.rejected]


def validate_record(record: Any) -> Optional[str]:
    """Return why ``record`` breaks the conversation schema, or None if it is valid.

    Args:
        record: a parsed JSON value.

    Returns:
        A short reason (``"message 2: empty content"``), or None.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("id"), str) or not record["id"]:
        return "missing or empty 'id'"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing or empty 'messages' list"
    for i, message in enumerate(messages):
        reason = _message_problem(i, message)
        if reason:
            return f"message {i}: {reason}"
    if messages[-1]["role"] != "assistant":
        return "the last message must be from the assistant"
    tools = record.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        return "'tools' must be a list of function definitions (JSON objects)"
    rejected = record.get("rejected")
    if rejected is not None:
        reason = _message_problem(len(messages), rejected)
        if reason or rejected["role"] != "assistant":
            return f"rejected reply: {reason or 'not from the assistant'}"
    if "meta" in record and not isinstance(record["meta"], dict):
        return "'meta' must be an object"
    return None


def _message_problem(i: int, message: Any) -> Optional[str]:
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return "expected {'role': ..., 'content': '...'}"
    role, calls = message.get("role"), message.get("tool_calls")
    if role not in _ROLES:
        return f"role {role!r} is not one of {', '.join(ROLES)}"
    if calls is not None and (role != "assistant" or not _valid_calls(calls)):
        return "'tool_calls' must be a non-empty list of {'type': 'function', 'function': {'name', 'arguments'}} " \
               "on an assistant message"
    if not calls and (not message["content"] or message["content"].isspace()):
        return "empty content"
    if "train" in message and (role != "assistant" or not isinstance(message["train"], bool)):
        return "'train' must be true or false, on an assistant message"
    if role == "system" and i != 0:
        return "a system message may only come first"
    return None


def _valid_calls(calls: Any) -> bool:
    return isinstance(calls, list) and bool(calls) and all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments"), dict) for c in calls)


def fold_system(messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The messages with a leading system message folded into the first user turn (a blank line between), for
    templates that refuse a system turn (``data.system_into_user``)."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return messages
    first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]
