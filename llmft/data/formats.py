"""The ``data_format`` options: one small converter per input format, from one raw record to chat messages.

A converter takes one parsed record (a JSON object, a CSV row as a dict, or a paragraph of a ``.txt`` file) and
returns its messages, ``[{"role", "content"}, ...]``, or raises ``Reject`` with the reason. Reading files,
ids, validation, de-duplication and the report are the same for every format (``llmft.data.convert``), so a new
format is one YAML file in ``conf/data_format/`` naming one function here (or an existing one with other keys).

The keyword arguments name the input's keys (columns): ``data_format=alpaca data_format.output=answer``.
"""

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from llmft.errors import DataError

Messages = List[Dict[str, str]]
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}


class Reject(Exception):
    """A record that cannot be converted; the message is the reason written to ``rejects.jsonl``."""


def converter(*required: str, valid_by_construction: bool = False) -> Callable:
    """Declare a converter: the arguments naming keys every record must have (checked on a file's first record),
    and whether its output always fits the schema (fixed roles in order, no empty text), so that the per-record
    schema check can be skipped for it."""
    def mark(func: Callable) -> Callable:
        func.required, func.valid_by_construction = required, valid_by_construction
        return func
    return mark


def _text(row: dict, key: Optional[str], need: bool = True) -> str:
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


def _object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise Reject(f"expected a JSON object, got {'an array' if isinstance(row, list) else type(row).__name__}")
    return row


@converter("instruction", "output", valid_by_construction=True)
def alpaca(row: Any, *, instruction: str = "instruction", input: Optional[str] = "input", output: str = "output",
           system: Optional[str] = "system", history: Optional[str] = "history") -> Messages:
    """Alpaca: ``instruction`` (and ``input``, after a blank line) is the user turn, ``output`` the reply.

    Args:
        row: one JSON object.
        instruction: key of the instruction.
        input: key of the optional context appended to the instruction (null: none).
        output: key of the reply.
        system: key of an optional system prompt (null: none).
        history: key of optional earlier turns, ``[[user, assistant], ...]`` (LLaMA-Factory's Alpaca).

    Returns:
        The messages.

    Raises:
        Reject: a key is missing, empty or not text.
    """
    if type(row) is not dict:  # noqa: E721
        _object(row)
    get = row.get  # the common case inline (plain, non-blank strings): this runs for every record
    prompt, extra, reply = get(instruction), get(input) if input else None, get(output)
    if type(prompt) is not str or not prompt or prompt.isspace():  # noqa: E721
        prompt = _text(row, instruction)
    if extra is not None and (type(extra) is not str or extra.isspace()):  # noqa: E721
        extra = _text(row, input, need=False)
    if type(reply) is not str or not reply or reply.isspace():  # noqa: E721
        reply = _text(row, output)
    messages = [{"role": "user", "content": f"{prompt}\n\n{extra}" if extra else prompt},
                {"role": "assistant", "content": reply}]
    preamble = get(system) if system else None
    if preamble is not None and (type(preamble) is not str or not preamble or preamble.isspace()):  # noqa: E721
        preamble = _text(row, system, need=False)
    if preamble:
        messages.insert(0, {"role": "system", "content": preamble})
    turns = get(history) if history else None
    if turns:
        if not isinstance(turns, list) or not all(isinstance(t, list) and len(t) == 2 for t in turns):
            raise Reject(f"'{history}' is not a list of [user, assistant] pairs")
        earlier = [{"role": role, "content": _text({history: text}, history)}
                   for pair in turns for role, text in zip(("user", "assistant"), pair)]
        at = 1 if messages[0]["role"] == "system" else 0
        messages[at:at] = earlier
    return messages


@converter("instruction", "response", valid_by_construction=True)
def csv(row: Any, *, instruction: str = "instruction", input: Optional[str] = "input", response: str = "response",
        system: Optional[str] = None) -> Messages:
    """A CSV row: ``instruction`` (and ``input``, after a blank line) is the user turn, ``response`` the reply.

    Args:
        row: one row, column name -> text (quoted fields may span lines; CRLF inside them reads as LF).
        instruction: column of the instruction.
        input: column of optional context appended to the instruction (used when present; null: none).
        response: column of the reply.
        system: column of an optional system prompt (null: none).

    Returns:
        The messages.

    Raises:
        Reject: a column is empty.
    """
    return alpaca(row, instruction=instruction, input=input, output=response, system=system, history=None)


@converter("conversations")
def sharegpt(row: Any, *, conversations: str = "conversations", role: str = "from", content: str = "value",
             system: Optional[str] = "system", roles: Optional[Mapping[str, str]] = None) -> Messages:
    """ShareGPT: a list of ``{"from", "value"}`` turns; ``roles`` maps its role names to the schema's.

    Args:
        row: one JSON object.
        conversations: key of the list of turns.
        role: key of a turn's speaker.
        content: key of a turn's text.
        system: key of an optional system prompt beside the turns (null: none).
        roles: speaker name -> ``system``/``user``/``assistant``/``tool``; default: human, gpt, system,
            function_call (an assistant turn), observation and tool (tool turns).

    Returns:
        The messages.

    Raises:
        Reject: the turns are missing, a speaker is not in ``roles``, or a turn's text is empty.
    """
    row, roles = _object(row), roles or SHAREGPT_ROLES
    turns = row.get(conversations)
    if not isinstance(turns, list) or not turns:
        raise Reject(f"'{conversations}' is not a non-empty list of turns")
    preamble = _text(row, system, need=False)
    messages = [{"role": "system", "content": preamble}] if preamble else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role) not in roles:
            speaker = turn.get(role) if isinstance(turn, dict) else turn
            raise Reject(f"turn {i}: speaker {speaker!r} is not one of {', '.join(roles)} (map it with "
                         f"data_format.roles.<name>=user|assistant|system|tool)")
        try:
            messages.append({"role": roles[turn[role]], "content": _text(turn, content)})
        except Reject as exc:
            raise Reject(f"turn {i}: {exc}") from None
    return messages


@converter("messages")
def messages(row: Any, *, messages: str = "messages", role: str = "role", content: str = "content") -> Messages:
    """OpenAI-style ``messages`` of ``{"role", "content"}`` (the target form); text parts of a content list are joined.

    Args:
        row: one JSON object (a conversation record, or any object with a list of messages).
        messages: key of the list of messages.
        role: key of a message's role (system, user, assistant or tool).
        content: key of a message's text, or of a list of ``{"type": "text", "text"}`` parts.

    Returns:
        The messages, with only ``role`` and ``content``.

    Raises:
        Reject: the list is missing, or a message has no text.
    """
    row = _object(row)
    turns = row.get(messages)
    if not isinstance(turns, list) or not turns:
        raise Reject(f"'{messages}' is not a non-empty list of messages")
    out = []
    for i, turn in enumerate(turns):
        text = turn.get(content) if isinstance(turn, dict) else None
        if isinstance(text, list):
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(text, str):
            raise Reject(f"message {i}: no text under '{content}'")
        out.append({"role": turn.get(role), "content": text})
    return out


@converter("text", valid_by_construction=True)
def text(row: Any, *, text: str = "text") -> Messages:
    """Plain text for completion-only training: one message from the assistant, trained on every token.

    Args:
        row: a paragraph of a ``.txt`` file, or a JSON object holding the text under ``text``.
        text: key of the text in a JSON object.

    Returns:
        ``[{"role": "assistant", "content": text}]``: with no prompt, it is tokenized as plain text, not
        through the chat template (see ``llmft.data.tokenize``).

    Raises:
        Reject: the text is missing or empty.
    """
    body = row if isinstance(row, str) else _text(_object(row), text)
    if not body.strip():
        raise Reject("empty text")
    return [{"role": "assistant", "content": body}]


# What data_format=auto recognises, in order: the format and the keys that give it away (with default names).
SIGNATURES: Sequence[Tuple[Callable, Sequence[str]]] = (
    (messages, ("messages",)), (sharegpt, ("conversations",)), (alpaca, ("instruction", "output")),
    (csv, ("instruction", "response")), (text, ("text",)),
)


def auto(row: Any) -> Messages:
    """Any built-in format, recognised from the keys of the record (``data_format=auto``, the default).

    A file is read with the format its first record shows, and that choice is logged and reported; this
    function converts a single record the same way.

    Args:
        row: one raw record.

    Returns:
        The messages.
    """
    return detect(row, "the record")(row)


def detect(row: Any, where: str) -> Callable:
    """The converter whose keys ``row`` has (a ``str`` row is plain text).

    Raises:
        DataError: no format matches; the message lists the keys found and the formats supported.
    """
    if isinstance(row, str):
        return text
    keys = list(row) if isinstance(row, dict) else []
    for convert, signature in SIGNATURES:
        if all(k in keys for k in signature):
            return convert
    known = "; ".join(f"{c.__name__} ({', '.join(s)})" for c, s in SIGNATURES)
    found = ", ".join(map(str, keys)) if keys else f"none: it is a JSON {type(row).__name__}, not an object"
    example = ("data_format=csv data_format.instruction=<column> data_format.response=<column>"
               if str(where).lower().endswith((".csv", ".tsv")) else
               "data_format=alpaca data_format.instruction=<key> data_format.output=<key>")
    raise DataError(f"{where}: cannot tell the data format from the keys of its first record (keys: {found}). "
                    f"data_format=auto knows: {known}. Name the format and your keys, e.g. {example}.")


def required_keys(convert: Callable) -> List[Tuple[str, str]]:
    """``(argument, key)`` for each input key that ``convert`` (or a ``functools.partial`` of it) needs."""
    func, bound = getattr(convert, "func", convert), getattr(convert, "keywords", {})
    params = inspect.signature(func).parameters
    return [(p, bound.get(p, params[p].default)) for p in getattr(func, "required", ())]


def format_name(convert: Callable) -> str:
    """The option name of a converter (``alpaca`` for ``functools.partial(alpaca, ...)``)."""
    return getattr(getattr(convert, "func", convert), "__name__", str(convert))
