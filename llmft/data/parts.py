"""What the chat formats share beyond role and text: content parts, tools and tool calls, labels, loss weights,
and the refusal of images, audio and video.

Each helper raises ``Reject`` with the reason written to ``rejects.jsonl``.
"""

import json
from typing import Any, Callable, Dict, List, Optional




class Reject(Exception):
    """A record that cannot be converted; the message is the reason written to ``rejects.jsonl``."""


class Excluded(Reject):
    """A record left out on purpose (a KTO ``label: false``): counted under its reason, never a strict-mode stop."""


def converter(*required: str, valid_by_construction: bool = False) -> Callable:
    """Declare a converter: the arguments naming keys every record must have (checked on a file's first record),
    and whether its output always fits the schema (fixed roles in order, no empty text), so that the per-record
    schema check can be skipped for it."""
    def mark(func: Callable) -> Callable:
        func.required, func.valid_by_construction = required, valid_by_construction
        return func
    return mark


def text_field(row: dict, key: Optional[str], need: bool = True) -> str:
    """The text under ``key``; '' for an optional key that is absent, null or blank; ``Reject`` otherwise."""
    value = row.get(key) if key else None
    if type(value) is not str:  # noqa: E721  (the common case first: this runs for every field of every record)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        elif value is not None:
            raise Reject(f"'{key}' is not text (a {type(value).__name__})")
        else:
            value = ""
    if value and not value.isspace():
        return value
    if need:
        raise Reject(f"no '{key}' key" if key not in row else f"'{key}' is empty")
    return ""


def as_object(row: Any) -> dict:
    """``row`` if it is a JSON object, else ``Reject``."""
    if not isinstance(row, dict):
        raise Reject(f"expected a JSON object, got {'an array' if isinstance(row, list) else type(row).__name__}")
    return row


def with_tools(messages: List[dict], tools: Optional[List[dict]]) -> Any:
    """A converter's result: the messages alone, or ``{"messages", "tools"}`` when the record defines tools."""
    return {"messages": messages, "tools": tools} if tools else messages


MEDIA_KEYS = ("images", "audios", "videos")
MULTIMODAL = "multimodal content is not supported (llmft trains text-only models)"


def text_only(row: dict) -> None:
    """Reject a record that carries images, audio or video (LLaMA-Factory's ``images``/``audios``/``videos``)."""
    for key in MEDIA_KEYS:
        if row.get(key):
            raise Reject(f"{MULTIMODAL}: the record has {key!r}")


def joined_parts(parts: list, where: str) -> str:
    """The text of a content list: ``{"type": "text", "text"}`` or ``{"type": "text", "value"}`` parts, joined with
    a newline; any other part (an image, audio) rejects the record."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise Reject(f"{where}: {MULTIMODAL}: a part of type {kind or type(part).__name__!r}")
        body = part.get("text", part.get("value"))
        if not isinstance(body, str):
            raise Reject(f"{where}: a text part without 'text' or 'value'")
        texts.append(body)
    return "\n".join(texts)


def tool_list(row: dict, key: Optional[str]) -> Optional[List[dict]]:
    """The function definitions under ``key``: a list, or a JSON string of one (ShareGPT); None when absent."""
    value = row.get(key) if key else None
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Reject(f"'{key}' is not valid JSON ({exc.msg})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise Reject(f"'{key}' is not a list of function definitions")
    return value or None


def tool_calls(value: Any, where: str) -> List[Dict[str, Any]]:
    """Tool calls in the form chat templates take, from a ShareGPT ``function_call`` text (``{"name",
    "arguments"}`` or a list of them) or OpenAI ``tool_calls`` (``{"type", "function": {"name", "arguments"}}``,
    the arguments possibly a JSON string)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Reject(f"{where}: a function call that is not JSON {{\"name\", \"arguments\"}}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            raise Reject(f"{where}: a function call needs a 'name' and JSON-object 'arguments'")
        out.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    if not out:
        raise Reject(f"{where}: an empty list of function calls")
    return out


def labelled_bad(row: dict, key: Optional[str]) -> bool:
    """Whether a KTO-style boolean ``label`` marks the record's reply as bad (``label: false``)."""
    return bool(key) and row.get(key) is False


def loss_weight(turn: dict, where: str) -> Optional[bool]:
    """Whether LLaMA-Factory's per-message ``loss_weight`` (0 or 1) trains the turn; None when absent."""
    weight = turn.get("loss_weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or weight not in (0, 1):
        raise Reject(f"{where}: loss_weight {weight!r} is not 0 or 1 (llmft trains a reply or not)")
    return weight == 1
