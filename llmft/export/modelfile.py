"""Ollama's ``Modelfile`` beside the GGUF, and the card (``README.md``) that says how to run the file.

Ollama's ``TEMPLATE`` is a Go template, not Jinja. For the three styles llmft's models use (ChatML, Llama 3,
Phi-3) the template is built from per-style pieces - the opening, a turn's header, its end, the generation
header - and those same pieces are first rendered in Python and compared with the tokenizer's own chat
template on the run's conversation: the ``TEMPLATE`` is written only when they agree, else Ollama uses the
template stored in the GGUF and the card says so.
"""

from typing import Dict, List, Optional, Sequence

STYLES = {  # name: (marker in the Jinja template, opening, turn header with {role}, end of turn)
    "chatml": ("<|im_start|>", "", "<|im_start|>{role}\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>", "<|begin_of_text|>", "<|start_header_id|>{role}<|end_header_id|>\n\n",
               "<|eot_id|>"),
    "phi3": ("<|assistant|>", "", "<|{role}|>\n", "<|end|>\n"),
}


def template_style(tokenizer, conversation: Sequence[dict]) -> Optional[str]:
    """The style whose pieces render ``conversation``'s prompt exactly as the chat template does, or None."""
    expected = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
    for name, (marker, opening, header, end) in STYLES.items():
        if marker in (tokenizer.chat_template or ""):
            turns = "".join(header.format(role=m["role"]) + m["content"] + end for m in conversation)
            if opening + turns + header.format(role="assistant") == expected:
                return name
    return None


def ollama_template(style: str) -> str:
    """The Go template of ``style``: every message of the conversation, then the assistant's header."""
    _, opening, header, end = STYLES[style]
    role_header = header.replace("{role}", "{{ .Role }}")
    return (f"{opening}{{{{- range .Messages }}}}{role_header}{{{{ .Content }}}}{end}{{{{ end }}}}"
            f"{header.format(role='assistant')}")


def modelfile(stop_tokens: List[str], system_prompt: Optional[str], style: Optional[str],
              sampling: Dict[str, float]) -> str:
    """The Modelfile text: ``FROM ./model.gguf``, the template, the stop tokens, the system prompt."""
    lines = ["FROM ./model.gguf", ""]
    if style:
        lines += [f'TEMPLATE """{ollama_template(style)}"""', ""]
    if system_prompt:
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += [f"PARAMETER {key} {value}" for key, value in sampling.items()]
    return "\n".join(lines) + "\n"


def gguf_card(base: str, qtype: str, style: Optional[str], report: dict) -> str:
    """Markdown: what the file is, how to run it with Ollama, llama.cpp and llmft-chat, and its check."""
    template_note = (f"The Modelfile's `TEMPLATE` is the {style} equivalent of the chat template (checked to render "
                     "the same prompt)." if style else
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
