"""The data_format converters, auto-detection, and every conf/data_format option built the way training builds it."""

import functools
import re

import pytest
from hydra.utils import instantiate

from llmft.config.location import CONFIG_DIR
from llmft.data.formats import Reject, alpaca, auto, csv, detect, format_name, messages, required_keys, sharegpt, text
from llmft.data.records import validate_record
from llmft.data.synth import examples, render
from llmft.errors import DataError

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "data_format").glob("*.yaml"))


def test_alpaca_puts_the_input_after_the_instruction_and_keeps_system_and_history():
    row = {"instruction": "Sum these.", "input": "2 3", "output": 5, "system": "Be exact.",
           "history": [["Hi", "Hello."]]}
    assert alpaca(row) == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sum these.\n\n2 3"},
                           {"role": "assistant", "content": "5"}]
    assert alpaca({"instruction": "Q", "input": "  ", "output": "A"}) == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("row,reason", [
    ({"instruction": "Q"}, "no 'output' key"),
    ({"instruction": "Q", "output": " \n"}, "'output' is empty"),
    ({"instruction": ["Q"], "output": "A"}, "'instruction' is not text (a list)"),
    ({"instruction": "Q", "output": "A", "history": "earlier"}, "'history' is not a list of [user, assistant] pairs"),
    (["Q", "A"], "expected a JSON object, got an array"),
])
def test_alpaca_rejects_a_bad_record_with_its_reason(row, reason):
    with pytest.raises(Reject, match=re.escape(reason)):
        alpaca(row)


def test_column_names_are_arguments():
    row = {"question": "Q?", "context": "ctx", "answer": "A."}
    assert alpaca(row, instruction="question", input="context", output="answer")[0]["content"] == "Q?\n\nctx"
    assert csv(row, instruction="question", input=None, response="answer") == [
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


def test_sharegpt_maps_speakers_and_tool_turns():
    row = {"system": "Use tools.", "conversations": [
        {"from": "human", "value": "3 x 4?"}, {"from": "function_call", "value": '{"name": "mul"}'},
        {"from": "observation", "value": '{"result": 12}'}, {"from": "gpt", "value": "12."}]}
    assert [m["role"] for m in sharegpt(row)] == ["system", "user", "assistant", "tool", "assistant"]
    assert validate_record({"id": "x", "messages": sharegpt(row)}) is None
    custom = {"dialog": [{"speaker": "client", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}]}
    assert sharegpt(custom, conversations="dialog", role="speaker", content="text",
                    roles={"client": "user", "agent": "assistant"})[1] == {"role": "assistant", "content": "Hello"}


def test_sharegpt_names_an_unknown_speaker_and_how_to_map_it():
    with pytest.raises(Reject, match=r"turn 1: speaker 'bot' is not one of .* data_format.roles.<name>=user"):
        sharegpt({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]})
    with pytest.raises(Reject, match="turn 0: 'value' is empty"):
        sharegpt({"conversations": [{"from": "human", "value": ""}]})


def test_messages_keeps_role_and_content_only_and_joins_text_parts_with_a_newline():
    parts = [{"type": "text", "text": "Look:"}, {"type": "text", "value": "a cat"}]
    row = {"messages": [{"role": "user", "content": parts,
                         "name": "ann"}, {"role": "assistant", "content": "A cat."}], "label": True}
    assert messages(row) == [{"role": "user", "content": "Look:\na cat"}, {"role": "assistant", "content": "A cat."}]
    with pytest.raises(Reject, match="message 1: no text under 'content'"):
        messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]})


def test_text_is_one_assistant_message():
    assert text("Once upon a time.") == [{"role": "assistant", "content": "Once upon a time."}]
    assert text({"body": "Doc."}, text="body") == [{"role": "assistant", "content": "Doc."}]


@pytest.mark.parametrize("row,expected", [
    ({"messages": []}, messages), ({"id": 1, "conversations": []}, sharegpt),
    ({"instruction": "", "input": "", "output": ""}, alpaca), ({"text": ""}, text), ("a paragraph", text),
])
def test_auto_detects_the_format_from_the_keys(row, expected):
    assert detect(row, "f.json") is expected


def test_instruction_response_is_csv_in_a_csv_file_and_alpaca_with_a_response_key_in_json():
    row = {"instruction": "Q", "response": "A"}
    assert detect(row, "f.csv") is csv
    json_format = detect(row, "f.json")
    assert format_name(json_format) == "alpaca (output=response)"
    assert json_format(row) == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_auto_lists_the_keys_found_and_the_formats_it_knows():
    with pytest.raises(DataError) as err:
        detect({"question": "q", "answer": "a"}, "faq.csv")
    message = str(err.value)
    assert "faq.csv: cannot tell the data format" in message and "(keys: question, answer)" in message
    for known in ("messages (messages)", "sharegpt (conversations)", "alpaca (instruction, output)",
                  "csv (instruction, response)", "text (text)"):
        assert known in message
    assert "data_format=csv data_format.instruction=<column> data_format.response=<column>" in message
    assert auto({"instruction": "Q", "output": "A"})[1]["content"] == "A"


def test_required_keys_follow_the_configured_names():
    assert required_keys(alpaca) == [("instruction", "instruction"), ("output", "output")]
    assert required_keys(functools.partial(csv, response="answer")) == [("instruction", "instruction"),
                                                                        ("response", "answer")]
    assert format_name(functools.partial(sharegpt, role="speaker")) == "sharegpt"


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_builds_as_training_builds_it_and_converts_its_format(make_cfg, option):
    cfg = make_cfg(["model=tiny", f"data_format={option}"])
    convert = instantiate(cfg.data_format, _convert_="all")
    fmt = {"auto": "alpaca", "dolly": "alpaca", "chosen": "sharegpt", "preference": "sharegpt"}.get(option, option)
    for i, example in enumerate(examples(10, seed=1)):
        row = render(example, fmt, i)
        if option in ("chosen", "preference"):  # a DPO ShareGPT record: the last turn is the chosen reply
            turns = row["conversations"]
            row = {"conversations": turns[:-1], "chosen": turns[-1], "rejected": {"from": "gpt", "value": "No."}}
        if option == "dolly":
            row = {"instruction": row["instruction"], "context": row["input"], "response": row["output"]}
        converted = convert(row["text"] if fmt == "text" else row)
        if option == "preference":  # a pair: the prompt and chosen reply as messages, the rejected one beside them
            assert converted["rejected"] == {"role": "assistant", "content": "No."}
            converted = converted["messages"]
        if isinstance(converted, dict):  # a record that defines tools (the synthetic calculator)
            assert converted["tools"][0]["name"] == "multiply"
            converted = converted["messages"]
        assert validate_record({"id": "x", "messages": converted}) is None
        answer = example["turns"][-1 if fmt in ("sharegpt", "messages") else 0][1]
        assert converted[-1]["content"] == (f"{row['text'].splitlines()[0]}\nAnswer: {answer}" if fmt == "text"
                                            else answer)


def test_the_default_data_format_is_auto(make_cfg):
    assert make_cfg([]).data_format._target_ == "llmft.data.formats.auto"


def test_dolly_is_alpaca_with_other_keys_in_one_yaml(make_cfg):
    convert = instantiate(make_cfg(["data_format=dolly"]).data_format, _convert_="all")
    row = {"instruction": "Summarise.", "context": "Pods share a network.", "response": "Shared net.", "category": "x"}
    assert convert(row) == [{"role": "user", "content": "Summarise.\n\nPods share a network."},
                            {"role": "assistant", "content": "Shared net."}]
    assert format_name(convert) == "alpaca" and detect(row, "dolly.jsonl").func is alpaca  # auto would drop the context
