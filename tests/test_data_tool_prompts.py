"""Evaluation prompts of tool-calling records: the chat template is given the record's tools, as in training, so a
tool-calling record is prompted with exactly the context it was trained on."""

from llmft.data.formats import sharegpt
from llmft.data.templates import use_chat_template
from llmft.data.tokenize import IGNORE_INDEX, tokenize_conversation
from llmft.evaluation.generation import chat_prompts, generate
from llmft.evaluation.metrics import reference_prompts
from llmft.models.tiny import build_tiny
from tests.test_data_shapes import glaive, qwen2


def run_starts(labels):
    """Where each run of trained tokens begins."""
    return [i for i, label in enumerate(labels) if label != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


def test_the_prompt_of_each_reply_of_a_glaive_tool_record_is_its_training_context_token_for_token_on_qwen2():
    record = sharegpt(glaive()[0])
    tok = qwen2("chatml_tools")
    trained = tokenize_conversation(tok, record["messages"], 100_000, tools=record["tools"])
    replies = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    starts = run_starts(trained["labels"])
    assert len(starts) == len(replies) == 4 and record["messages"][replies[1]]["tool_calls"]  # a call among them
    for start, i in zip(starts, replies):
        (text,) = chat_prompts(tok, [record["messages"][:i]], [record["tools"]])
        prompt = tok(text, add_special_tokens=False)
        assert prompt["input_ids"] == trained["input_ids"][:start]
    assert "search_recipes" not in chat_prompts(tok, [record["messages"][:1]])[0]  # so the tools above did count


def test_reference_metrics_prompt_each_record_with_its_own_tools():
    records = [{"id": "a", **sharegpt(glaive()[0])}, {"id": "b", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    prompts, tools, references = reference_prompts(records)
    last = max(i for i, m in enumerate(records[0]["messages"]) if m["role"] == "assistant")
    assert prompts == [records[0]["messages"][:last], [{"role": "user", "content": "Hi"}]]
    assert tools == [records[0]["tools"], None]
    assert references == [records[0]["messages"][last]["content"], "Hello"]


def test_generation_prompts_each_conversation_with_its_own_tools(cache_dir):
    record = sharegpt(glaive()[0])
    tok = qwen2("chatml_tools")
    prompt = record["messages"][:1]
    texts = chat_prompts(tok, [prompt, prompt, prompt], [record["tools"], None, []])
    assert texts[0] == tok.apply_chat_template(prompt, tools=record["tools"], tokenize=False,
                                               add_generation_prompt=True)
    assert texts[0].count("search_recipes") == 1 and texts[0].endswith(texts[1])
    assert texts[1] == texts[2] == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert chat_prompts(tok, [prompt]) == texts[1:2]
    loaded = build_tiny(arch={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048},
                        cache_dir=cache_dir)
    use_chat_template(loaded.tokenizer, "chatml", "chatml_tools")  # the byte-level ChatML template ignores tools
    model, tok = loaded.model, loaded.tokenizer
    answers = generate(model, tok, [prompt, prompt], max_new_tokens=8, tools=[record["tools"], None])
    assert answers == [generate(model, tok, [prompt], max_new_tokens=8, tools=t)[0]
                       for t in ([record["tools"]], None)]  # prompts of unequal length, batched: padding is masked
