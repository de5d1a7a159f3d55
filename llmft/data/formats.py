"""The ``data_format`` options: one small converter per input format, from one raw record to chat messages.

A converter takes one parsed record (a JSON object, a CSV row as a dict, or a paragraph of a ``.txt`` file) and
returns its messages, ``[{"role", "content"}, ...]``, or raises ``Reject`` with the reason. Reading files,
ids, validation, de-duplication and the report are the same for every format (``llmft.data.convert``), so a new
format is one YAML file in ``conf/data_format/`` naming one function here (or an existing one with other keys).

The keyword arguments name the input's keys (columns): ``data_format=alpaca data_format.output=answer``.
"""

import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from llmft.data.chats import SHAREGPT_ROLES, messages, sharegpt  # noqa: F401  (data_format targets live here)
from llmft.data.parts import Reject, as_object, converter, text_field, text_only  # noqa: F401
from llmft.errors import DataError

Messages = List[Dict[str, str]]


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
        as_object(row)
    if "images" in row or "audios" in row or "videos" in row:
        text_only(row)
    get = row.get  # the common case inline (plain, non-blank strings): this runs for every record
    prompt, extra, reply = get(instruction), get(input) if input else None, get(output)
    if type(prompt) is not str or not prompt or prompt.isspace():  # noqa: E721
        prompt = text_field(row, instruction)
    if extra is not None and (type(extra) is not str or extra.isspace()):  # noqa: E721
        extra = text_field(row, input, need=False)
    if type(reply) is not str or not reply or reply.isspace():  # noqa: E721
        reply = text_field(row, output)
    messages = [{"role": "user", "content": f"{prompt}\n\n{extra}" if extra else prompt},
                {"role": "assistant", "content": reply}]
    preamble = get(system) if system else None
    if preamble is not None and (type(preamble) is not str or not preamble or preamble.isspace()):  # noqa: E721
        preamble = text_field(row, system, need=False)
    if preamble:
        messages.insert(0, {"role": "system", "content": preamble})
    turns = get(history) if history else None
    if turns:
        if not isinstance(turns, list) or not all(isinstance(t, list) and len(t) == 2 for t in turns):
            raise Reject(f"'{history}' is not a list of [user, assistant] pairs")
        earlier = [{"role": role, "content": text_field({history: text}, history)}
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
    body = row if isinstance(row, str) else text_field(as_object(row), text)
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


def detect(row: Any, where: str, pairs: Optional[bool] = False) -> Callable:
    """The converter whose keys ``row`` has (a ``str`` row is plain text).

    Args:
        row: the first record of a file.
        where: the file, for messages.
        pairs: True: preference pairs are wanted (a preference objective), and conversations are refused;
            False: conversations are, and preference data is refused; None: either.

    Raises:
        DataError: no format matches (the message lists the keys found and the formats supported), or the data
            is not the kind ``pairs`` wants.
    """
    keys = list(row) if isinstance(row, dict) else []
    if "rejected" in keys and ("chosen" in keys or "messages" in keys):
        if pairs is False:
            raise DataError(refuse_preference(row, where))
        from llmft.data.preference import preference

        return preference
    if isinstance(row, str):
        found = text
    else:
        found = next((c for c, signature in SIGNATURES if all(k in keys for k in signature)), None)
    if found is not None and pairs:
        raise DataError(refuse_conversations(where, format_name(found)))
    if found is csv and not str(where).lower().endswith((".csv", ".tsv")):
        return INSTRUCTION_RESPONSE  # JSON with instruction/response keys: Alpaca with another reply key
    if found is not None:
        return found
    known = "; ".join(f"{c.__name__} ({', '.join(s)})" for c, s in SIGNATURES)
    found = ", ".join(map(str, keys)) if keys else f"none: it is a JSON {type(row).__name__}, not an object"
    example = ("data_format=csv data_format.instruction=<column> data_format.response=<column>"
               if str(where).lower().endswith((".csv", ".tsv")) else
               "data_format=alpaca data_format.instruction=<key> data_format.output=<key>")
    raise DataError(f"{where}: cannot tell the data format from the keys of its first record (keys: {found}). "
                    f"data_format=auto knows: {known}. Name the format and your keys, e.g. {example}.")


def refuse_preference(row: dict, where: str) -> str:
    """Why supervised training will not read a preference file, and what to do instead."""
    from llmft.data.preference import shape_of

    return (f"{where} holds preference data ({shape_of(row)}): each record pairs a chosen and a rejected reply. "
            "Supervised fine-tuning on it as it is would train the rejected replies too, so llmft will not guess. "
            "To learn from both sides, train with a preference objective: objective=dpo (or objective=orpo). "
            "To fine-tune on the preferred replies only, pass data_format=chosen (the prompt plus the chosen reply "
            "of each record).")


def refuse_conversations(where: str, format_name: str) -> str:
    """Why a preference objective will not read conversations, and what to do instead."""
    return (f"{where} holds conversations (data_format={format_name}), and a preference objective (objective=dpo "
            "or orpo) learns from pairs: a prompt with a chosen and a rejected reply. Point data.path at preference "
            "data (LLaMA-Factory's conversations + chosen/rejected, hh-rlhf chosen/rejected message lists, or TRL's "
            "{prompt, chosen, rejected}) with data_format=auto or data_format=preference, or train these "
            "conversations with objective=sft.")


def reads_pairs(convert: Callable) -> bool:
    """Whether a converter gives preference pairs (``data_format=preference``) rather than conversations."""
    return bool(getattr(getattr(convert, "func", convert), "pairs", False))


def required_keys(convert: Callable) -> List[Tuple[str, str]]:
    """``(argument, key)`` for each input key that ``convert`` (or a ``functools.partial`` of it) needs."""
    func, bound = getattr(convert, "func", convert), getattr(convert, "keywords", {})
    params = inspect.signature(func).parameters
    return [(p, bound.get(p, params[p].default) if p in params else p) for p in getattr(func, "required", ())]


def format_name(convert: Callable) -> str:
    """The option name of a converter (``alpaca`` for ``functools.partial(alpaca, ...)``; a detected variant says
    its keys: ``alpaca (output=response)``)."""
    return getattr(convert, "shown", None) or getattr(getattr(convert, "func", convert), "__name__", str(convert))


INSTRUCTION_RESPONSE = functools.partial(alpaca, output="response")
INSTRUCTION_RESPONSE.shown = "alpaca (output=response)"
