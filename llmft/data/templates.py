"""Chat templates for tokenizers that have none (base models such as phi-2), or whose own one lacks tool support:
ChatML, the Alpaca prompt, or ChatML with tools.

``data.fallback_template`` picks one for a tokenizer without a template; ``data.chat_template`` replaces even a
tokenizer's own. It is set on the tokenizer itself, so training, evaluation and the
tokenizer saved beside the adapter all use the same template. A tokenizer with its own template keeps it.

ChatML's markers (``<|im_start|>``, ``<|im_end|>``) are plain text to a tokenizer that lacks them as special
tokens; training then also appends EOS after each reply, so generation stops. The Alpaca prompt ends each reply
with the tokenizer's EOS itself.
"""

import logging
from typing import Optional

from transformers import PreTrainedTokenizerBase

from llmft.errors import ConfigError

log = logging.getLogger(__name__)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.")
ALPACA = (
    "{% if messages[0]['role'] != 'system' %}{{ '" + ALPACA_PREAMBLE + "\n\n' }}{% endif %}"
    "{% for message in messages %}{% if not loop.first %}{{ '\n\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] }}"
    "{% elif message['role'] == 'tool' %}{{ '### Input:\n' + message['content'] }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\n### Response:\n' }}{% endif %}"
)
# ChatML with tools as Qwen2.5 and Hermes render them: the definitions in the system turn inside <tools></tools>, each
# call as <tool_call>{"name", "arguments"}</tool_call> in the assistant's turn, results in a user turn inside
# <tool_response></tool_response>. For ChatML models whose own template ignores tools (Qwen2).
CHATML_TOOLS = (
    "{%- set rest = messages %}{%- if tools %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}"
    "{%- set rest = messages[1:] %}{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n' }}{%- endif %}"
    "{%- for message in rest %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{{- ('\n' if message['content'] or not loop.first else '') + '<tool_call>\n{\"name\": \"' + "
    "call['function']['name'] + '\", \"arguments\": ' + (call['function']['arguments'] | tojson) + "
    "'}\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
TEMPLATES = {"chatml": CHATML, "alpaca": ALPACA, "chatml_tools": CHATML_TOOLS}


def use_chat_template(tokenizer: PreTrainedTokenizerBase, fallback: str = "chatml",
                      override: Optional[str] = None) -> str:
    """Give ``tokenizer`` the ``override`` template, or the ``fallback`` one if it has no chat template of its own.

    Args:
        tokenizer: the model's tokenizer; changed in place.
        fallback: ``chatml``, ``alpaca`` or ``chatml_tools`` (``data.fallback_template``).
        override: one of the same names, replacing even the tokenizer's own template (``data.chat_template``);
            None: keep it.

    Returns:
        ``"own"`` if the tokenizer kept its template, else the name of the one it got.

    Raises:
        ConfigError: a name is not a known template.
    """
    for key, name in (("fallback_template", fallback), ("chat_template", override)):
        if name is not None and name not in TEMPLATES:
            raise ConfigError(f"data.{key}={name} is not a template llmft knows: choose "
                              f"{', '.join(TEMPLATES)}.")
    if override is not None:
        tokenizer.chat_template = TEMPLATES[override]
        log.info("Chat template: %s (data.chat_template), in place of the tokenizer's own", override)
        return override
    if getattr(tokenizer, "chat_template", None):
        return "own"
    tokenizer.chat_template = TEMPLATES[fallback]
    log.info("The tokenizer has no chat template: using %s (data.fallback_template)", fallback)
    return fallback
