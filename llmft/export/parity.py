"""Parity from training to serving: the prompt at inference is the prompt part of the training rendering.

The failure users of fine-tuning tools report most is a model that trained well and answers badly once served:
the prompt built at inference differs from what training showed it (another template, a doubled BOS), or the
end-of-turn token it learned to emit is not a stop token, so it runs on. ``check_parity`` renders one
conversation both ways with the run's tokenizer and says, with the two token sequences, where they part.
"""

from typing import List, Optional, Sequence

from llmft.data.tokenize import IGNORE_INDEX, tokenize_conversation
from llmft.errors import LlmftError

SAMPLE = [{"role": "user", "content": "How do I list pods?"}, {"role": "assistant", "content": "kubectl get pods"}]


class ParityError(LlmftError):
    """The inference prompt or the stop tokens differ from what training used."""


def sample_conversation(system_prompt: Optional[str] = None, records: Sequence[dict] = ()) -> List[dict]:
    """The run's first validation conversation that ends with an assistant reply, else a fixed one."""
    for record in records:
        messages = record.get("messages") or []
        if len(messages) > 1 and messages[-1]["role"] == "assistant":
            return list(messages)
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + SAMPLE


def prompt_ids(tokenizer, messages: Sequence[dict]) -> List[int]:
    """The ids of the prompt that inference builds (``llmft-chat``, evaluation): the template and no extra BOS."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer, conversation: Sequence[dict]) -> int:
    """The token that closes the assistant's reply in training: the first special token among its labels."""
    example = tokenize_conversation(tokenizer, conversation, max_seq_length=1 << 30)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    return next((t for t in trained if t in special), tokenizer.eos_token_id)


def check_parity(tokenizer, conversation: Sequence[dict], stop_ids: Sequence[int]) -> dict:
    """Check the inference prompt and the stop tokens against the training rendering of ``conversation``.

    Returns:
        ``{"prompt_tokens", "end_of_turn_id", "end_of_turn", "stop_ids"}``.

    Raises:
        ParityError: the two prompts differ, a BOS or special token is doubled, or the end-of-turn token is not
            trained or not a stop token; the message shows the token sequences.
    """
    example = tokenize_conversation(tokenizer, conversation, max_seq_length=1 << 30)
    prompt = prompt_ids(tokenizer, conversation[:-1])
    trained, eot = example["input_ids"][:len(prompt)], end_of_turn_id(tokenizer, conversation)
    shown = f"inference prompt {_show(tokenizer, prompt)}; training rendering {_show(tokenizer, trained)}"
    if trained != prompt:
        raise ParityError(f"the prompt built at inference is not the prompt part of the training rendering: "
                          f"{shown}. Use the same chat template for both (tokenizer.chat_template).")
    doubled = [i for i, (a, b) in enumerate(zip(prompt, prompt[1:])) if a == b and a in tokenizer.all_special_ids]
    if doubled:  # BOS twice: the template writes one and the tokenizer adds another
        raise ParityError(f"the inference prompt repeats the special token "
                          f"{tokenizer.convert_ids_to_tokens(prompt[doubled[0]])} at position {doubled[0]}: {shown}. "
                          "Render the template with add_special_tokens=False, or drop the BOS from the template.")
    if eot not in [t for t in example["labels"] if t != IGNORE_INDEX]:
        raise ParityError(f"the end-of-turn token {tokenizer.convert_ids_to_tokens(eot)} is masked out of the "
                          "training labels (padding with the same id?), so the model never learned to stop.")
    if eot not in stop_ids:
        raise ParityError(f"the end-of-turn token {tokenizer.convert_ids_to_tokens(eot)} ({eot}) that training "
                          f"taught the model to emit is not among the generation stop tokens {list(stop_ids)}; "
                          "set the model's generation_config.eos_token_id to include it.")
    return {"prompt_tokens": len(prompt), "end_of_turn_id": eot, "end_of_turn": tokenizer.convert_ids_to_tokens(eot),
            "stop_ids": list(stop_ids)}


def _show(tokenizer, ids: Sequence[int]) -> str:
    return f"{list(ids)} ({tokenizer.convert_ids_to_tokens(list(ids))})"
