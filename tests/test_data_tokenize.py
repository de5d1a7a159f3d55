"""Training-time formatting beyond the model's own template: fallback templates, plain text, the tokenization cache."""

import os

import pytest
from transformers import AutoTokenizer

from llmft.data.rendering import RenderError, check_rendered
from llmft.data.templates import ALPACA_PREAMBLE, use_chat_template
from llmft.data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_records
from llmft.errors import ConfigError
from llmft.models.tiny import byte_level_tokenizer
from tests.conftest import realdata
from tests.test_data import CONVERSATION, trained_runs

REPLIES = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]


def without_template(tokenizer):
    tokenizer.chat_template = None
    return tokenizer


def test_a_tokenizer_with_a_template_keeps_it():
    tok = byte_level_tokenizer()
    own = tok.chat_template
    assert use_chat_template(tok, "alpaca") == "own" and tok.chat_template == own


def test_alpaca_fallback_trains_exactly_each_reply_and_eos():
    tok = without_template(byte_level_tokenizer())
    assert use_chat_template(tok, "alpaca") == "alpaca"
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith("You are terse.\n\n### Instruction:\nWhat is a pod?\n\n### Response:\n")
    out = tokenize_conversation(tok, CONVERSATION, 4096)
    assert [tok.decode(r) for r in trained_runs(out["labels"])] == [r + tok.eos_token for r in REPLIES]
    assert tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True) == \
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nWhat is a pod?\n\n### Response:\n"


def test_chatml_fallback_on_a_tokenizer_without_chatml_tokens_appends_eos():
    tok = without_template(AutoTokenizer.from_pretrained(realdata("tokenizers", "phi-3-mini")))
    assert use_chat_template(tok, "chatml") == "chatml"
    out = tokenize_conversation(tok, CONVERSATION, 4096)
    assert [tok.decode(r) for r in trained_runs(out["labels"])] == [f"{r}<|im_end|>\n{tok.eos_token}" for r in REPLIES]


def test_an_unknown_fallback_is_named():
    with pytest.raises(ConfigError, match="data.fallback_template=vicuna is not a template llmft knows"):
        use_chat_template(without_template(byte_level_tokenizer()), "vicuna")


def test_plain_text_is_trained_on_every_token_in_windows():
    tok = byte_level_tokenizer()
    story = "Once upon a time " * 10  # 170 bytes + EOS: windows of 64, 64, 43
    data, dropped = tokenize_records([{"id": "s", "messages": [{"role": "assistant", "content": story}]}], tok, 64)
    assert dropped == 0 and [len(x) for x in data["input_ids"]] == [64, 64, 43]
    assert all(x == y for x, y in zip(data["input_ids"], data["labels"]))
    assert tok.decode(sum(data["input_ids"], [])) == story + tok.eos_token
    assert "<|im_start|>" not in tok.decode(data["input_ids"][0])


def test_a_template_that_refuses_a_record_is_a_data_error():
    tok = byte_level_tokenizer()
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    records = [{"id": "r1", "messages": CONVERSATION}]
    with pytest.raises(Exception, match="the chat template of the tiny model's byte-level tokenizer refuses record "
                                        "'r1' of the train split: Conversation roles"):
        tokenize_records(records, tok, 512)


def test_a_refusal_names_the_tokenizer_as_a_user_knows_it_never_its_class():
    tok = byte_level_tokenizer()  # no folder or hub id: transformers 5 would name its class, TokenizersBackend
    tools = [{"type": "function", "function": {"name": "calculate_percentage", "parameters": {}}}]
    rendered = tok.apply_chat_template(CONVERSATION, tools=tools, tokenize=False)
    with pytest.raises(RenderError) as refused:
        check_rendered(tok, rendered, CONVERSATION, tools)
    assert str(refused.value).startswith("the chat template of the tiny model's byte-level tokenizer ignores the tools")
    tok.name_or_path = ""  # a tokenizer built in memory by someone else's code
    with pytest.raises(RenderError) as refused:
        check_rendered(tok, rendered, CONVERSATION, tools)
    assert str(refused.value).startswith("the tokenizer's chat template ignores the tools")
    assert type(tok).__name__ not in str(refused.value)


def test_a_second_tokenization_loads_the_cached_file_instead_of_tokenizing(tmp_path):
    tok = byte_level_tokenizer()
    records = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
               for i in range(20)]
    first, _ = tokenize_records(records, tok, 128, cache_dir=str(tmp_path))
    cached = list((tmp_path / "tokenized").glob("*.arrow"))
    assert len(cached) == 1 and first.cache_files[0]["filename"] == str(cached[0])
    before = os.stat(cached[0])
    tok.chat_template = "{{ raise_exception('tokenizing again') }}"  # a tokenizer that cannot tokenize ...
    with pytest.raises(Exception, match="tokenizing again"):
        tokenize_records(records, tok, 128, cache_dir=str(tmp_path))  # ... and is another fingerprint: it tries
    tok = byte_level_tokenizer()
    second, _ = tokenize_records(records, tok, 128, cache_dir=str(tmp_path))
    after = os.stat(cached[0])
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten: loaded
    assert second["input_ids"] == first["input_ids"] and second.cache_files[0]["filename"] == str(cached[0])
    _, _ = tokenize_records(records, tok, 64, cache_dir=str(tmp_path))  # another setting, another file
    _, _ = tokenize_records(records[:10], tok, 128, cache_dir=str(tmp_path))  # other records, another file
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 3


def test_the_cache_key_covers_train_on_prompt(tmp_path):
    tok = byte_level_tokenizer()
    records = [{"id": "1", "messages": CONVERSATION}]
    masked, _ = tokenize_records(records, tok, 512, cache_dir=str(tmp_path))
    full, _ = tokenize_records(records, tok, 512, train_on_prompt=True, cache_dir=str(tmp_path))
    assert IGNORE_INDEX in masked["labels"][0] and IGNORE_INDEX not in full["labels"][0][1:]
