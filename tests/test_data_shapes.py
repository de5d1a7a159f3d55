"""Data as the field ships it: tool calls, KTO labels, content parts and loss weights, multimodal records, and
preference files, with real third-party files from ../shared/realdata and small fixtures of the other shapes."""

import json
import re

import pytest
from transformers import AutoTokenizer

from llmft.data.formats import auto, detect, messages, sharegpt
from llmft.data.parts import Reject
from llmft.data.prepare import prepare
from llmft.data.preference import chosen, preference_pair
from llmft.data.splits import load_splits
from llmft.data.records import PreferencePair, validate_record
from llmft.data.templates import use_chat_template
from llmft.data.tokenize import IGNORE_INDEX, RenderError, tokenize_conversation, tokenize_records
from llmft.errors import DataError
from tests.conftest import realdata
from tests.test_data import trained_runs

GLAIVE = ("sharegpt", "glaive_toolcall_en_demo.json")
TOOLS_JSON = ('{"name": "search_recipes", "description": "Search for recipes based on ingredients", "parameters": '
              '{"type": "object", "properties": {"ingredients": {"type": "array", "items": {"type": "string"}, '
              '"description": "The ingredients to search for"}}, "required": ["ingredients"]}}')
CALL = ('<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", '
        '"rice"]}}\n</tool_call><|im_end|>\n')


def glaive():
    return json.loads(realdata(*GLAIVE).read_text(encoding="utf-8"))


def qwen2(template=None):
    tok = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    use_chat_template(tok, "chatml", template)
    return tok


def test_a_glaive_tool_record_trains_token_for_token_through_chatml_tools_on_the_qwen2_tokenizer():
    record = sharegpt(glaive()[0])
    assert record["tools"] == [json.loads(TOOLS_JSON)] and validate_record({"id": "x", **record}) is None
    turns = [t["value"] for t in glaive()[0]["conversations"]]
    prompts = [  # written out by hand: what the model sees before each of its four replies
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou "
        "are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + TOOLS_JSON +
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\n" + turns[0] +
        "<|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>user\n{turns[2]}<|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>user\n<tool_response>\n{turns[4]}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>user\n{turns[6]}<|im_end|>\n<|im_start|>assistant\n"]
    replies = [turns[1] + "<|im_end|>\n", CALL, turns[5] + "<|im_end|>\n", turns[7] + "<|im_end|>\n"]
    tok = qwen2("chatml_tools")
    out = tokenize_conversation(tok, record["messages"], 100_000, tools=record["tools"])
    ids, labels = [], []
    for prompt, reply in zip(prompts, replies):  # each piece starts and ends at a special token: ids concatenate
        prompt_ids, reply_ids = (tok(t, add_special_tokens=False)["input_ids"] for t in (prompt, reply))
        ids += prompt_ids + reply_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    assert out["input_ids"] == ids and out["labels"] == labels
    assert tok(''.join(p + r for p, r in zip(prompts, replies)), add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize("name", ["qwen2-instruct", "phi-3-mini"])
def test_templates_without_tool_support_refuse_tool_records_naming_the_template_and_turn(name):
    tok = AutoTokenizer.from_pretrained(realdata("tokenizers", name))
    record = sharegpt(glaive()[0])
    with pytest.raises(RenderError, match=f"the chat template of .*{name} ignores the tools the conversation "
                                          "defines \\(no 'search_recipes' in its rendering\\).*chatml_tools"):
        tokenize_conversation(tok, record["messages"], 8192, tools=record["tools"])
    with pytest.raises(RenderError, match=f"the chat template of .*{name} drops message 3 \\(assistant tool call: "
                                          "'search_recipes'\\) from its rendering"):
        tokenize_conversation(tok, record["messages"], 8192)  # the same turns without the definitions


def test_training_refuses_a_template_that_drops_tool_turns_naming_the_record(tmp_path):
    prepare([str(realdata(*GLAIVE))], str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    with_calls = [r for r in records if any(m.get("tool_calls") for m in r["messages"])]
    assert with_calls and all(r["tools"] for r in with_calls)
    with pytest.raises(DataError, match=f"record '{with_calls[0]['id']}' of the train split: the chat template of "
                                        ".*qwen2-instruct ignores the tools"):
        tokenize_records(with_calls[:3], qwen2(), 4096)
    dataset, dropped = tokenize_records(with_calls[:3], qwen2("chatml_tools"), 4096)
    assert len(dataset) == 3 and not dropped


def test_records_that_differ_only_in_tools_are_not_duplicates(tmp_path):
    rows = glaive()
    report = prepare([str(realdata(*GLAIVE))], str(tmp_path))
    distinct = {(json.dumps(r["conversations"]), r.get("tools", "")) for r in rows}
    assert len({json.dumps(r["conversations"]) for r in rows}) < len(distinct)  # the file has such records
    assert report["total"]["duplicates"] == len(rows) - len(distinct)
    assert report["total"]["read"] == report["total"]["written"] + report["total"]["duplicates"] == 300


def test_kto_records_labelled_false_are_left_out_with_their_own_reason(tmp_path):
    rows = json.loads(realdata("messages", "kto_en_demo.json").read_text(encoding="utf-8"))
    report = prepare([str(realdata("messages", "kto_en_demo.json"))], str(tmp_path), strict=True)
    bad = sum(r["label"] is False for r in rows)
    assert bad == 150 and report["total"]["rejected"] == bad
    (reason,) = report["rejected_by_reason"]
    assert reason.startswith("labelled false ('label': false, a KTO file)")
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == bad and all(r["record"]["label"] is False for r in rejects)
    t = report["total"]
    assert t["read"] == t["written"] + t["rejected"] + t["duplicates"] == 300
    assert messages(rows[0], label=None)  # data_format.label=null trains every record


V1 = {"messages": [
    {"role": "user", "content": [{"type": "text", "value": "Hello"}, {"type": "text", "value": "world"}],
     "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "text", "value": "Hi there."}], "loss_weight": 0.0},
    {"role": "user", "content": [{"type": "text", "value": "And now?"}]},
    {"role": "assistant", "content": [{"type": "text", "value": "Now this."}], "loss_weight": 1.0}]}


def test_llamafactory_v1_parts_are_joined_with_a_newline_and_loss_weight_0_is_context():
    converted = messages(V1)
    assert converted[0]["content"] == "Hello\nworld" and converted[1] == {"role": "assistant",
                                                                           "content": "Hi there.", "train": False}
    tok = qwen2()
    out = tokenize_conversation(tok, converted, 4096)
    assert [tok.decode(r) for r in trained_runs(out["labels"])] == ["Now this.<|im_end|>\n"]
    assert "Hi there." in tok.decode(out["input_ids"])
    with pytest.raises(Reject, match="loss_weight 0.5 is not 0 or 1"):
        messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                                   "loss_weight": 0.5}]})


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
     "images": ["cat.png"]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                               {"type": "image_url", "image_url": {"url": "cat.png"}}]},
                  {"role": "assistant", "content": "A cat."}]},
    {"conversations": [{"from": "human", "value": "<video>Say?"}, {"from": "gpt", "value": "Hi."}], "videos": ["v"]},
    {"instruction": "<audio>Transcribe.", "output": "Hello.", "audios": ["a.wav"]},
])
def test_multimodal_records_are_rejected_counted_and_listed(tmp_path, row):
    data = tmp_path / "mm.jsonl"
    data.write_text(json.dumps(row) + "\n" + json.dumps(row | {"id": "2"}) + "\n")
    with pytest.raises(DataError, match="no usable record is left to split. 2 of the 2 records read were rejected"):
        prepare([str(data)], str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["total"]["rejected"] == 2 and report["total"]["read"] == 2
    rejects = (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 2 and all("multimodal content is not supported" in json.loads(r)["reason"]
                                     for r in rejects)


HH = {"chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
      "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}]}
TRL = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
       "rejected": [{"role": "assistant", "content": "Go away."}]}
TRL_TEXT = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}


@pytest.mark.parametrize("row,shape", [
    (HH, "chosen/rejected conversations (hh-rlhf)"), (TRL, "prompt/chosen/rejected (TRL)"),
    (TRL_TEXT, "prompt/chosen/rejected (TRL)"),
])
def test_preference_shapes_become_one_pair_type_and_auto_refuses_them(row, shape):
    assert preference_pair(row) == PreferencePair(prompt=[{"role": "user", "content": "Hi?"}],
                                                  chosen={"role": "assistant", "content": "Hello!"},
                                                  rejected={"role": "assistant", "content": "Go away."})
    assert chosen(row) == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]
    with pytest.raises(DataError, match=re.escape(f"pref.jsonl holds preference data ({shape}): each record")):
        detect(row, "pref.jsonl")


def test_hh_rlhf_chosen_lists_train_with_data_format_messages_chosen():
    assert messages(HH, messages="chosen") == HH["chosen"]
    with pytest.raises(Reject, match="differ before their last message"):
        preference_pair({**HH, "rejected": [{"role": "user", "content": "Other?"}, HH["rejected"][1]]})


def test_a_dpo_sharegpt_file_is_refused_in_one_paragraph_and_trains_with_data_format_chosen(tmp_path):
    path = realdata("preference", "dpo_en_demo.json")
    with pytest.raises(DataError) as err:
        load_splits(auto, str(path))  # conversations wanted (objective=sft)
    assert str(err.value) == (
        f"{path} holds preference data (ShareGPT conversations with chosen/rejected replies (LLaMA-Factory DPO)): "
        "each record pairs a chosen and a rejected reply. Supervised fine-tuning on it as it is would train the "
        "rejected replies too, so llmft will not guess. To learn from both sides, train with a preference "
        "objective: objective=dpo (or objective=orpo). To fine-tune on the preferred replies only, pass "
        "data_format=chosen (the prompt plus the chosen reply of each record).")
    rows = json.loads(path.read_text(encoding="utf-8"))
    report = prepare([str(path)], str(tmp_path / "chosen"), chosen)
    assert report["total"]["read"] == 300 and report["total"]["rejected"] == 0
    written = [json.loads(line) for s in ("train", "val", "test")
               for line in (tmp_path / "chosen" / f"{s}.jsonl").read_text().splitlines()]
    replies = {r["messages"][-1]["content"] for r in written}
    assert replies <= {r["chosen"]["value"] for r in rows} and not replies & {r["rejected"]["value"] for r in rows}
    with_system = [r for r in rows if r["conversations"][0]["from"] == "system"]
    assert len(with_system) == 80 and all(validate_record(r) is None for r in written)
    assert auto({"instruction": "Q", "output": "A"})  # other shapes still detect
