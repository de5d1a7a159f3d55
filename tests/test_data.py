"""The bundled data, the conversation schema, and assistant-only masking with real chat templates."""

import json

import pytest
from transformers import AutoTokenizer

from llmft.config.resolvers import sample_data
from llmft.data import load_splits, pad_collate, tokenize_records, validate_record
from llmft.data.formats import messages
from llmft.data.tokenize import IGNORE_INDEX, tokenize_conversation
from llmft.errors import DataError
from llmft.models.tiny import byte_level_tokenizer
from tests.conftest import realdata

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a pod?"},
    {"role": "assistant", "content": "The smallest deployable unit."},
    {"role": "user", "content": "And a node? (été)"},
    {"role": "assistant", "content": "A machine that runs pods."},
]


def test_bundled_sample_has_sixty_plus_pairs_with_a_split():
    splits = load_splits(messages, sample_data("kubernetes"))
    assert len(splits.train) == 56 and len(splits.val) == 12
    assert not {r["id"] for r in splits.train} & {r["id"] for r in splits.val}
    assert {r["meta"]["split"] for r in splits.train} == {"train"} and {r["meta"]["split"] for r in splits.val} == \
        {"val"}
    prompts = json.loads(open(sample_data("kubernetes/prompts.json")).read())
    asked = {m["content"] for r in splits.train + splits.val for m in r["messages"] if m["role"] == "user"}
    assert len(prompts) == 5 and not {p["prompt"] for p in prompts} & asked  # held aside


@pytest.mark.parametrize("record,reason", [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "missing or empty 'id'"),
    ({"id": "x", "messages": []}, "missing or empty 'messages'"),
    ({"id": "x", "messages": [{"role": "user", "content": "q"}]}, "last message must be from the assistant"),
    ({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
     "message 1: empty content"),
    ({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                              {"role": "assistant", "content": "a"}]}, "system message may only come first"),
    ({"id": "x", "messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "role 'human' is not one of"),
])
def test_schema_violations_are_named(record, reason):
    assert reason in validate_record(record)


def test_a_broken_line_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"id": "1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"id": "2", "messages": [{"role": "user", "content": "q"}]}))
    with pytest.raises(DataError, match=r"bad.jsonl:3: the record breaks the conversation schema: the last message"):
        load_splits(messages, str(path), strict=True)


def test_a_single_file_is_split_by_seed(tmp_path):
    path = tmp_path / "all.jsonl"
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    a = load_splits(messages, str(path), val_ratio=0.2, seed=1)
    b = load_splits(messages, str(path), val_ratio=0.2, seed=1)
    assert len(a.val) == 4 and len(a.train) == 16 and [r["id"] for r in a.val] == [r["id"] for r in b.val]
    assert [r["id"] for r in load_splits(messages, str(path), val_ratio=0.2, seed=2).val] != \
        [r["id"] for r in a.val]


def assistant_text(tokenizer, messages):
    out = tokenize_conversation(tokenizer, messages, max_seq_length=4096)
    return tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX]), out


def test_byte_level_tiny_tokenizer_masks_all_but_the_assistant_replies():
    tok = byte_level_tokenizer()
    trained, out = assistant_text(tok, CONVERSATION)
    assert trained == "The smallest deployable unit.<|im_end|>\nA machine that runs pods.<|im_end|>\n"
    assert len(out["input_ids"]) == len(out["labels"])
    assert tok.decode(out["input_ids"]) == tok.apply_chat_template(CONVERSATION, tokenize=False)


def trained_runs(labels):
    """The contiguous runs of trained (not -100) label ids."""
    runs, current = [], []
    for t in labels + [IGNORE_INDEX]:
        if t == IGNORE_INDEX:
            runs, current = (runs + [current] if current else runs), []
        else:
            current.append(t)
    return runs


@pytest.mark.parametrize("name,end_of_turn,last_extra", [
    ("qwen2-instruct", "<|im_end|>", None),
    ("phi-3-mini", "<|end|>", "<|endoftext|>"),  # Phi-3's template closes a conversation with EOS
])
def test_real_chat_templates_train_on_exactly_the_assistant_text_and_its_end_token(name, end_of_turn, last_extra):
    tok = AutoTokenizer.from_pretrained(realdata("tokenizers", name))
    out = tokenize_conversation(tok, CONVERSATION, max_seq_length=4096)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert out["input_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]  # the template, token for token
    runs = trained_runs(out["labels"])
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert [tok.decode(r, skip_special_tokens=True).strip() for r in runs] == replies
    for i, run in enumerate(runs):
        tokens = [t for t in tok.convert_ids_to_tokens(run) if t.strip("\nĊ▁")]
        expected_tail = [end_of_turn] + ([last_extra] if last_extra and i == len(runs) - 1 else [])
        assert tokens[-len(expected_tail):] == expected_tail


def test_truncation_that_leaves_nothing_to_train_drops_the_record_and_says_so():
    tok = byte_level_tokenizer()
    long_prompt = [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]
    records = [{"id": "long", "messages": long_prompt}, {"id": "short", "messages": CONVERSATION[1:3]}]
    kept, dropped = tokenize_records(records, tok, max_seq_length=64)
    assert len(kept) == 1 and dropped == 1
    with pytest.raises(DataError, match="none of the 1 train records keeps an assistant token"):
        tokenize_records(records[:1], tok, max_seq_length=64)


def test_collate_pads_right_masks_padding_and_labels():
    batch = pad_collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = pad_collate([{"input_ids": [5, 6]}, {"input_ids": [8]}], 0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6], [0, 8]]
