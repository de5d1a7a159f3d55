"""A conversation rendered by the model's chat template, split into the spans training masks and the spans it
trains: growing prefixes of the conversation are rendered, so any template whose output for a prefix is a prefix of
its output for the whole (ChatML, Llama 3, Phi-3, Qwen2 ...) works unchanged; a template that drops, merges or
reorders a turn is refused with what to do (``RenderError``).
"""

from typing import Any, List, Optional, Sequence, Tuple

from transformers import PreTrainedTokenizerBase

from llmft.errors import DataError


def _common_prefix(a: str, b: str, markers: Sequence[str]) -> int:
    """Length of the common prefix of ``a`` and ``b``, never ending inside a special token of either."""
    low, high = 0, min(len(a), len(b))  # bisect for the first difference: slices compare in C
    if a[:high] == b[:high]:
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if a[:middle] == b[:middle] else (low, middle)
    end, moved = low, True
    while moved:  # "<|endoftext|>" and "<|user|>" share "<|": step back to where the token starts
        moved = False
        for text in (a, b):
            for marker in markers:
                start = text.find(marker, max(0, end - len(marker) + 1), end + len(marker) - 1)
                if 0 <= start < end < start + len(marker):
                    end, moved = start, True
    return end


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], tools: Optional[Sequence[dict]] = None,
           **kwargs: Any) -> str:
    """The chat template's text of ``messages``, the conversation's function definitions passed as ``tools=``
    (None when it defines none); ``kwargs`` go to ``apply_chat_template`` (``add_generation_prompt=True``)."""
    return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                         **kwargs)


class RenderError(DataError):
    """The chat template cannot render a conversation faithfully (a dropped, merged or reordered turn)."""


def render_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict],
                 tools: Optional[Sequence[dict]] = None) -> List[Tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_trained_reply)`` spans that concatenate to it.

    Reply ``i`` starts where the template's prompt for it (``messages[:i]`` plus the generation prompt) ends,
    and runs as far as the rendering of ``messages[:i + 1]`` agrees with the whole conversation's: so the
    reply's end-of-turn marker is trained, and a marker that a template adds only at the very end of a
    conversation (Phi-3 appends EOS) is trained only there. A reply marked ``"train": false`` is context. ``tools``
    go to the template as ``tools=``; every message (and tool) must show in the rendering (``check_rendered``).

    Raises:
        RenderError: the template drops, merges or reorders a turn.
    """
    full = render(tokenizer, messages, tools)
    check_rendered(tokenizer, full, messages, tools)
    markers = [str(t) for t in tokenizer.added_tokens_decoder.values()]
    spans, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
        end = _common_prefix(render(tokenizer, messages[: i + 1], tools), full, markers)
        if not full.startswith(prompt) or len(prompt) < done or end <= len(prompt):
            raise RenderError(f"{template_name(tokenizer)} renders the conversation up to message {i} differently "
                              "from the conversation itself (it merges or reorders turns), so the assistant's "
                              "tokens cannot be located. Use a template that renders turns in order "
                              "(data.chat_template).")
        spans += [(full[done:len(prompt)], False), (full[len(prompt):end], message.get("train", True))]
        done = end
    if done < len(full):
        spans.append((full[done:], False))
    return spans


def template_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """``the chat template of <tokenizer>``, for messages: the tokenizer's folder or hub id (or its own name), never
    the class, whose name says nothing to a user (transformers 5 calls every fast tokenizer TokenizersBackend)."""
    name = getattr(tokenizer, "name_or_path", "")
    return f"the chat template of {name}" if name else "the tokenizer's chat template"


def check_rendered(tokenizer: PreTrainedTokenizerBase, full: str, messages: Sequence[dict],
                   tools: Optional[Sequence[dict]] = None) -> None:
    """Every message's text (and every tool call's and tool's name) must appear in ``full``, messages in order.

    A few substring searches per record: cheap beside the rendering itself.

    Raises:
        RenderError: naming the template and the first message it drops.
    """
    for tool in tools or ():
        name = (tool.get("function") if isinstance(tool.get("function"), dict) else tool).get("name")
        if name and name not in full:
            raise RenderError(f"{template_name(tokenizer)} ignores the tools the conversation defines (no {name!r} "
                              f"in its rendering). {NO_TOOLS}")
    at = 0
    for i, message in enumerate(messages):
        needles = [message["content"].strip()] if message["content"].strip() else []
        needles += [c["function"]["name"] for c in message.get("tool_calls") or ()]
        for needle in needles:
            found = full.find(needle, at)
            if found < 0:
                raise RenderError(_dropped(tokenizer, i, message))
            at = found + len(needle)


NO_TOOLS = ("It has no tool support: use a model whose template renders tools and tool calls, or render them "
            "as ChatML with Hermes-style <tool_call> tags with data.chat_template=chatml_tools.")


def _dropped(tokenizer: PreTrainedTokenizerBase, i: int, message: dict) -> str:
    role = "assistant tool call" if message.get("tool_calls") else message["role"]
    text = message["content"].strip() or message["tool_calls"][0]["function"]["name"]
    hint = (NO_TOOLS if message["role"] == "tool" or message.get("tool_calls") else
            "It does not render a system turn: fold it into the first user turn with data.system_into_user=true, "
            "or drop it." if message["role"] == "system" else
            "Use a template that renders every turn (data.chat_template).")
    return (f"{template_name(tokenizer)} drops message {i} ({role}: {text[:60]!r}) from its rendering, so "
            f"training would not see the conversation the data holds. {hint}")


def template_refusal(tokenizer: PreTrainedTokenizerBase, record_id: str, split: Optional[str],
                     exc: Exception) -> str:
    """One paragraph on a record the chat template refuses or cannot render faithfully."""
    record = f"record {record_id!r}" + (f" of the {split} split" if split else "")
    if isinstance(exc, RenderError):
        return f"{record}: {exc}"
    text = str(exc)
    hint = ("fold the system turn into the first user turn with data.system_into_user=true, or drop it"
            if "system" in text.lower() else "fix the record, or use a model (or data.chat_template) whose template "
            "accepts its roles and their order")
    return f"{template_name(tokenizer)} refuses {record}: {text}. To go on, {hint}."
