"""The chat formats: ShareGPT turns and OpenAI-style messages, with tools, tool calls, labels and loss weights.

Both return the schema's messages, or ``{"messages", "tools"}`` when the record defines tools (see
``llmft.data.records``). A record labelled ``false`` (KTO) is ``Excluded``; one with images, audio or video is
rejected, as is a content list with a non-text part.
"""

from typing import Any, Dict, Mapping, Optional

from llmft.data.parts import (Excluded, Reject, as_object, converter, joined_parts, labelled_bad, loss_weight,
                              text_field, text_only, tool_calls, tool_list, with_tools)

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "function_call", "observation": "tool", "tool": "tool"}
SCHEMA_ROLES = ("user", "assistant", "system", "tool", "function_call")
LABELLED_FALSE = ("labelled false ('{key}': false, a KTO file): a reply marked bad is not trained on (to train on "
                  "every record, name the format and drop the label: data_format=messages data_format.label=null)")


def _check_row(row: Any, label: Optional[str]) -> dict:
    row = as_object(row)
    text_only(row)
    if labelled_bad(row, label):
        raise Excluded(LABELLED_FALSE.format(key=label))
    return row


@converter("conversations")
def sharegpt(row: Any, *, conversations: str = "conversations", role: str = "from", content: str = "value",
             system: Optional[str] = "system", tools: Optional[str] = "tools", label: Optional[str] = "label",
             roles: Optional[Mapping[str, str]] = None) -> Any:
    """ShareGPT: a list of ``{"from", "value"}`` turns; ``roles`` maps its role names to the schema's.

    Args:
        row: one JSON object.
        conversations: key of the list of turns.
        role: key of a turn's speaker.
        content: key of a turn's text.
        system: key of an optional system prompt beside the turns (null: none).
        tools: key of optional function definitions (a list, or a JSON string of one, as Glaive's); null: none.
        label: key of an optional boolean (KTO): false excludes the record; null: ignore it.
        roles: speaker name -> ``system``/``user``/``assistant``/``tool``/``function_call`` (an assistant tool
            call, its text the JSON ``{"name", "arguments"}``); default: human, gpt, system, function_call,
            observation and tool (tool results).

    Returns:
        The messages, or ``{"messages", "tools"}``.

    Raises:
        Reject: the turns are missing, a speaker is not in ``roles``, or a turn's text is empty.
    """
    row, roles = _check_row(row, label), roles or SHAREGPT_ROLES
    turns = row.get(conversations)
    if not isinstance(turns, list) or not turns:
        raise Reject(f"'{conversations}' is not a non-empty list of turns")
    preamble = text_field(row, system, need=False)
    messages = [{"role": "system", "content": preamble}] if preamble else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role) not in roles:
            speaker = turn.get(role) if isinstance(turn, dict) else turn
            raise Reject(f"turn {i}: speaker {speaker!r} is not one of {', '.join(roles)} (map it with "
                         f"data_format.roles.<name>={'|'.join(SCHEMA_ROLES)})")
        try:
            body = turn.get(content)
            body = joined_parts(body, f"turn {i}") if isinstance(body, list) else text_field(turn, content)
            messages.append(_turn(roles[turn[role]], body, turn, f"turn {i}"))
        except Reject as exc:
            raise Reject(exc.args[0] if str(exc).startswith("turn ") else f"turn {i}: {exc}") from None
    return with_tools(messages, tool_list(row, tools))


def _turn(role: str, body: str, turn: dict, where: str) -> Dict[str, Any]:
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": tool_calls(body, where)}
    message = {"role": role, "content": body}
    trained = False if turn.get("train") is False else loss_weight(turn, where)  # "train": the schema's own key
    if trained is False and role == "assistant":
        message["train"] = False
    return message


@converter("messages")
def messages(row: Any, *, messages: str = "messages", role: str = "role", content: str = "content",
             tools: Optional[str] = "tools", label: Optional[str] = "label") -> Any:
    """OpenAI-style ``messages`` of ``{"role", "content"}`` (the target form).

    A content list's text parts (``{"type": "text", "text"}`` or LLaMA-Factory's ``{"type": "text", "value"}``)
    are joined with a newline; an assistant message's ``tool_calls`` are kept (then its content may be empty or
    null); a message's ``loss_weight`` 0 keeps the reply as context without training it.

    Args:
        row: one JSON object (a conversation record, or any object with a list of messages).
        messages: key of the list of messages.
        role: key of a message's role (system, user, assistant or tool).
        content: key of a message's text, or of a list of text parts.
        tools: key of optional function definitions (a list, or a JSON string of one); null: none.
        label: key of an optional boolean (KTO): false excludes the record; null: ignore it.

    Returns:
        The messages (``role``, ``content``, and ``tool_calls``/``train`` where given), or ``{"messages", "tools"}``.

    Raises:
        Reject: the list is missing, or a message has no text.
    """
    row = _check_row(row, label)
    turns = row.get(messages)
    if not isinstance(turns, list) or not turns:
        raise Reject(f"'{messages}' is not a non-empty list of messages")
    out = []
    for i, turn in enumerate(turns):
        text = turn.get(content) if isinstance(turn, dict) else None
        calls = turn.get("tool_calls") if isinstance(turn, dict) else None
        if isinstance(text, list):
            text = joined_parts(text, f"message {i}")
        if text is None and calls:
            text = ""
        if not isinstance(text, str):
            raise Reject(f"message {i}: no text under '{content}'")
        message = _turn(turn.get(role), text, turn, f"message {i}")
        if calls:
            message["tool_calls"] = tool_calls(calls, f"message {i}")
        out.append(message)
    return with_tools(out, tool_list(row, tools))
