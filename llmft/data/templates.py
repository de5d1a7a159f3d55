"""Chat templates for tokenizers that have none (base models such as phi-2): ChatML or the Alpaca prompt.

``data.fallback_template`` picks one. It is set on the tokenizer itself, so training, evaluation and the
tokenizer saved beside the adapter all use the same template. A tokenizer with its own template keeps it.

ChatML's markers (``<|im_start|>``, ``<|im_end|>``) are plain text to a tokenizer that lacks them as special
tokens; training then also appends EOS after each reply, so generation stops. The Alpaca prompt ends each reply
with the tokenizer's EOS itself.
"""

import logging

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
TEMPLATES = {"chatml": CHATML, "alpaca": ALPACA}


def use_chat_template(tokenizer: PreTrainedTokenizerBase, fallback: str = "chatml") -> str:
    """Give ``tokenizer`` the ``fallback`` template if it has no chat template of its own.

    Args:
        tokenizer: the model's tokenizer; changed in place.
        fallback: ``chatml`` or ``alpaca``.

    Returns:
        ``"own"`` if the tokenizer kept its template, else the fallback's name.

    Raises:
        ConfigError: ``fallback`` is not a known template.
    """
    if getattr(tokenizer, "chat_template", None):
        return "own"
    if fallback not in TEMPLATES:
        raise ConfigError(f"data.fallback_template={fallback} is not a template llmft knows: choose "
                          f"{' or '.join(TEMPLATES)}.")
    tokenizer.chat_template = TEMPLATES[fallback]
    log.info("The tokenizer has no chat template: using %s (data.fallback_template)", fallback)
    return fallback
