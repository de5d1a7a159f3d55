"""Ollama's ``Modelfile`` beside the GGUF, and the card (``README.md``) that says how to run the file.

Ollama's ``TEMPLATE`` is a Go template, not Jinja. For the three styles llmft's models use (ChatML, Llama 3,
Phi-3) the template is built from per-style pieces - the opening, a turn's header, its end, the generation
header - plus, for templates such as SmolLM2's and Qwen2's, the system turn the chat template inserts when a
conversation has none. Those same pieces are first rendered in Python, as the Go template renders them, and
compared with the tokenizer's own chat template on several conversations (with and without a system prompt,
one and several turns, the run's own): the ``TEMPLATE`` is written only when every one agrees, else Ollama uses
the template stored in the GGUF and the card says so.

Ollama hands the template ``.Messages`` with the Modelfile's ``SYSTEM`` as a first system message when the
request has none, consecutive messages of one role merged: the conversations checked alternate roles.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from jinja2 import TemplateError

STYLES = {  # name: (marker in the Jinja template, opening, turn header with {role}, end of turn)
    "chatml": ("<|im_start|>", "", "<|im_start|>{role}\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>", "<|begin_of_text|>", "<|start_header_id|>{role}<|end_header_id|>\n\n",
               "<|eot_id|>"),
    "phi3": ("<|assistant|>", "", "<|{role}|>\n", "<|end|>\n"),
}
CHECKED = [  # conversations the Go template must render as the chat template does, besides the run's own
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"},
     {"role": "user", "content": "d"}],
]


@dataclass
class Template:
    """A chat template restated in pieces: its style and the system prompt it inserts when there is none."""

    style: str
    default_system: Optional[str] = None

    def render(self, conversation: Sequence[dict]) -> str:
        """The prompt as the Go template of :meth:`go` renders it (generation header included)."""
        _, opening, header, end = STYLES[self.style]
        text = opening
        for i, message in enumerate(conversation):
            if i == 0 and self.default_system is not None and message["role"] != "system":
                text += header.format(role="system") + self.default_system + end
            text += header.format(role=message["role"]) + message["content"] + end
        return text + header.format(role="assistant")

    def go(self) -> str:
        """The Go template for Ollama: every message (after the inserted system turn), then the assistant's header."""
        _, opening, header, end = STYLES[self.style]
        turn = header.replace("{role}", "{{ $m.Role }}") + "{{ $m.Content }}" + end
        inserted = "" if self.default_system is None else (
            '{{ if and (eq $i 0) (ne $m.Role "system") }}' + header.format(role="system") + self.default_system + end
            + "{{ end }}")
        return f"{opening}{{{{- range $i, $m := .Messages }}}}{inserted}{turn}{{{{ end }}}}" \
               f"{header.format(role='assistant')}"


def chat_template_pieces(tokenizer, conversation: Sequence[dict] = ()) -> Optional[Template]:
    """The :class:`Template` that renders ``CHECKED`` and ``conversation`` as the chat template does, or None."""
    for name, (marker, opening, header, end) in STYLES.items():
        if marker not in (tokenizer.chat_template or ""):
            continue
        template = Template(name, _default_system(tokenizer, opening, header, end))
        if all(template.render(c) == _rendered(tokenizer, c) for c in [*CHECKED, *([list(conversation)] if
                                                                                   conversation else [])]):
            return template
    return None


def _default_system(tokenizer, opening: str, header: str, end: str) -> Optional[str]:
    """The system prompt the chat template inserts before a conversation that has none, if it inserts one."""
    user = [{"role": "user", "content": "Hello"}]
    text, turn = _rendered(tokenizer, user), header.format(role="user") + "Hello" + end + header.format(role="assistant")
    start = opening + header.format(role="system")
    if not (text.startswith(start) and text.endswith(end + turn)):
        return None
    inserted = text[len(start):-len(end + turn)]
    return inserted if "{{" not in inserted and '"""' not in inserted else None


def _rendered(tokenizer, conversation: Sequence[dict]) -> str:
    try:
        return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
    except TemplateError:  # a template that refuses a conversation (roles must alternate...): no restatement
        return ""


def modelfile(stop_tokens: List[str], system_prompt: Optional[str], template: Optional[Template],
              sampling: Dict[str, float]) -> str:
    """The Modelfile text: ``FROM ./model.gguf``, the template, the stop tokens, the system prompt."""
    lines = ["FROM ./model.gguf", ""]
    if template:
        lines += [f'TEMPLATE """{template.go()}"""', ""]
    if system_prompt:
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += [f"PARAMETER {key} {value}" for key, value in sampling.items()]
    return "\n".join(lines) + "\n"


def gguf_card(base: str, qtype: str, template: Optional[Template], report: dict) -> str:
    """Markdown: what the file is, how to run it with Ollama, llama.cpp and llmft-chat, and its check."""
    template_note = (f"The Modelfile's `TEMPLATE` is the {template.style} equivalent of the chat template (checked to "
                     "render the same prompts, with and without a system prompt)." if template else
                     "The chat template is not one the Modelfile can restate (ChatML, Llama 3, Phi-3), so Ollama "
                     "uses the chat template stored in the GGUF itself.")
    rows = [("base model", base), ("type", qtype), ("size", f"{report['gguf_bytes'] / 1e6:.1f} MB"),
            ("max logit difference / logit range", f"{report['gguf_relative_logit_difference']:.2e} "
                                                   f"(tolerance {report['gguf_tolerance']:.0e})"),
            ("greedy answers equal to the merged model's", f"{report['gguf_greedy_matches']} of "
                                                            f"{len(report['gguf_answers'])}"),
            ("stop tokens", ", ".join(f"`{t}`" for t in report["gguf_stop_tokens"]))]
    return "\n".join([
        "---", f"base_model: {base}", "tags: [llmft, gguf, lora]", "---", "",
        f"# {base}, fine-tuned with llmft, as GGUF ({qtype})", "",
        "The LoRA adapter merged into the base model, in one file for llama.cpp, Ollama, LM Studio and "
        "llama-cpp-python.", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
        "## Run it", "", "```bash", "ollama create my-model -f Modelfile && ollama run my-model",
        "llama-cli -m model.gguf -cnv", "llmft-chat RUN_FOLDER    # the run itself, before export", "```", "",
        template_note, ""])
