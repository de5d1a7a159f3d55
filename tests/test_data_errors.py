"""Tokenizer and template failures as one paragraph naming the file and the fix; llmft-check on raw files."""

import json
import re
import shutil

import pytest

from llmft.data import load_splits
from llmft.data.formats import messages
from llmft.data.tokenize import tokenize_records
from llmft.data.tokenizer import open_tokenizer
from llmft.errors import DataError, ModelLoadError
from tests.conftest import realdata
from tests.test_data_cli import assert_clean_error, cli

# Gemma's rule, as its template states it: no system turn, and user/assistant alternate
GEMMA_LIKE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
              "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WITH_SYSTEM = {"id": "s1", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is a pod?"},
                                        {"role": "assistant", "content": "The smallest deployable unit."}]}


def tokenizer_copy(tmp_path, name="phi-3-mini", **config):
    folder = tmp_path / name
    shutil.copytree(realdata("tokenizers", name), folder)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def test_a_missing_tokenizer_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^model.tokenizer=/nonexistent: no such folder\. Point it at a folder"):
        open_tokenizer("/nonexistent", key="model.tokenizer")


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.update(model={**d["model"], "merges": [1, 2, 3]}), r"tokenizer.json cannot be read \(TypeError: "),
    (None, r"tokenizer.json cannot be read \(JSONDecodeError: Unterminated string"),
])
def test_a_broken_tokenizer_json_is_named_with_the_fix(tmp_path, damage, message):
    folder = tokenizer_copy(tmp_path)
    path = folder / "tokenizer.json"
    if damage is None:
        path.write_bytes(path.read_bytes()[:5000])
    else:
        data = json.loads(path.read_text())
        damage(data)
        path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=message + r".*Copy it again from the model's repository"):
        open_tokenizer(str(folder), key="model.tokenizer")


def test_a_sentencepiece_only_folder_without_sentencepiece_says_to_install_it(tmp_path):
    pytest.importorskip("tokenizers")
    try:
        import sentencepiece  # noqa: F401
        pytest.skip("sentencepiece is installed here")
    except ImportError:
        pass
    folder = tokenizer_copy(tmp_path, tokenizer_class="LlamaTokenizer")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x0bnot a real model")
    with pytest.raises(ModelLoadError, match=r"holds only a SentencePiece model \(tokenizer.model, no "
                                             r"tokenizer.json\).*Install it: pip install sentencepiece\.$"):
        open_tokenizer(str(folder), key="model.tokenizer")


def test_a_template_that_refuses_a_system_turn_offers_system_into_user(tmp_path):
    tok = open_tokenizer(str(tokenizer_copy(tmp_path, "qwen2-instruct", chat_template=GEMMA_LIKE)))
    with pytest.raises(DataError, match=r"refuses record 's1' of the train split: System role not supported\. To "
                                        r"go on, fold the system turn into the first user turn with "
                                        r"data.system_into_user=true, or drop it\.$"):
        tokenize_records([WITH_SYSTEM], tok, 512)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(WITH_SYSTEM) + "\n" + json.dumps({**WITH_SYSTEM, "id": "s2"}) + "\n")
    splits = load_splits(messages, str(data), val_ratio=0.5, system_into_user=True)
    assert splits.train[0]["messages"][0] == {"role": "user", "content": "Be brief.\n\nWhat is a pod?"}
    dataset, dropped = tokenize_records(splits.train, tok, 512)
    assert len(dataset) == 1 and not dropped


def test_check_names_a_missing_tokenizer_and_a_template_refusal_without_a_traceback(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(WITH_SYSTEM) + "\n")
    assert_clean_error(cli("llmft-check", data, "model=tiny", "model.tokenizer=/nonexistent"), "llmft-check",
                       r"model.tokenizer=/nonexistent: no such folder")
    folder = tokenizer_copy(tmp_path, "qwen2-instruct", chat_template=GEMMA_LIKE)
    refused = cli("llmft-check", data, "model=tiny", f"model.tokenizer={folder}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr + refused.stdout
    assert "REFUSED by the chat template: 1 records" in refused.stdout and "data.system_into_user=true" in \
        refused.stdout
    folded = cli("llmft-check", data, "model=tiny", f"model.tokenizer={folder}", "data.system_into_user=true")
    assert folded.returncode == 0 and "REFUSED" not in folded.stdout


def test_check_converts_a_raw_file_first(tmp_path):
    raw = tmp_path / "openai.jsonl"
    raw.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                           for i in range(3)) + '{"messages": []}\n')
    result = cli("llmft-check", raw, "--schema-only")
    assert result.returncode == 1 and "missing or empty 'id'" not in result.stdout
    assert result.stdout.splitlines() == [
        f"{raw}:4: 'messages' is not a non-empty list of messages",
        f"{raw}: raw messages data (detected), not conversation records: checked as llmft-prepare and llmft-train "
        f"convert it (read 4, written 3, rejected 1, duplicates 0). llmft-prepare {raw} --out DIR writes the "
        "records."]


def test_check_refuses_the_real_glaive_file_under_qwen2_and_passes_it_with_chatml_tools(tmp_path):
    glaive = realdata("sharegpt", "glaive_toolcall_en_demo.json")
    qwen2 = realdata("tokenizers", "qwen2-instruct")
    refused = cli("llmft-check", glaive, "model=tiny", f"model.tokenizer={qwen2}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr + refused.stdout  # it once exited 0
    (line,) = [line for line in refused.stdout.splitlines() if line.startswith("REFUSED by the chat template")]
    assert re.search(r"the first: record '[0-9a-f]{16}': the chat template of \S*qwen2-instruct ignores the tools "
                     r"the conversation defines \(no '\w+' in its rendering\)\..*data.chat_template=chatml_tools",
                     line), line
    passed = cli("llmft-check", glaive, "model=tiny", f"model.tokenizer={qwen2}", "data.chat_template=chatml_tools")
    assert passed.returncode == 0 and "REFUSED" not in passed.stdout, passed.stdout + passed.stderr[-2000:]


# Gemma's other rule: user and assistant turns alternate (as its template raises it)
ALTERNATING = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_template_that_requires_alternation_is_one_paragraph_in_check_and_in_training(tmp_path, cache_dir):
    folder = tokenizer_copy(tmp_path, "qwen2-instruct", chat_template=ALTERNATING)
    twice = {"id": "u2", "messages": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Still there?"},
                                      {"role": "assistant", "content": "Yes."}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(twice) + "\n")
    refusal = (r"the chat template of \S+ refuses record 'u2'( of the train split)?: Conversation roles "
               r"must alternate user/assistant/user/assistant/\.\.\.\. To go on, fix the record, or use a model \(or "
               r"data.chat_template\) whose template accepts its roles and their order\.")
    checked = cli("llmft-check", data, "model=tiny", f"model.tokenizer={folder}")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr + checked.stdout
    assert re.search("REFUSED by the chat template: 1 records .*the first: " + refusal, checked.stdout), checked.stdout
    assert "qwen2-instruct refuses record 'u2'" in checked.stdout  # training names the tiny model's copy of it
    trained = cli("llmft-train", "model=tiny", f"model.tokenizer={folder}", f"data.path={data}", "data.val_ratio=0",
                  "eval=none", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(trained, "llmft-train", refusal)


def test_train_names_a_missing_tokenizer_without_a_traceback(tmp_path, cache_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(WITH_SYSTEM) + "\n")
    result = cli("llmft-train", "model=tiny", "model.tokenizer=/nonexistent", f"data.path={data}", "eval=none",
                 f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(result, "llmft-train", r"model.tokenizer=/nonexistent: no such folder\. Point it at a folder")
