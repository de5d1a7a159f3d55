"""The one conversation schema every input format is converted to.

``{"id": str, "messages": [{"role": str, "content": str}, ...], "meta": {"source", "tags", "split"}}``: roles
system, user, assistant and tool; a system message only first; the last message from the assistant; no
empty content; ids unique within a file.
"""

from typing import Any, Optional

ROLES = ("system", "user", "assistant", "tool")
_ROLES = frozenset(ROLES)


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
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"message {i}: expected {{'role': ..., 'content': '...'}}"
        if message.get("role") not in _ROLES:
            return f"message {i}: role {message.get('role')!r} is not one of {', '.join(ROLES)}"
        if not message["content"] or message["content"].isspace():
            return f"message {i}: empty content"
        if message["role"] == "system" and i != 0:
            return f"message {i}: a system message may only come first"
    if messages[-1]["role"] != "assistant":
        return "the last message must be from the assistant"
    if "meta" in record and not isinstance(record["meta"], dict):
        return "'meta' must be an object"
    return None
