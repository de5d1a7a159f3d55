"""llmft-export --gguf: the tiny run's GGUF read back by transformers, a tiny Qwen2 with its real tokenizer, the
refusals, the parity check, and a failed check that leaves nothing behind."""

import importlib.util
import json
import subprocess
import sys

import gguf
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PhiConfig, Qwen2Config, Qwen2ForCausalLM
from transformers import PreTrainedTokenizerFast

from llmft.export import export_run
from llmft.export.gguf_export import _check_tokenizer
from llmft.export.gguf_vocab import piece_scores, pre_tokenizer_name, token_table, vocab_writer
from llmft.export.gguf_writer import GGUFError, apply_rope_factors, check_supported, write_gguf
from llmft.export.parity import ParityError, check_parity, sample_conversation
from tests.conftest import realdata
from tests.test_export import tiny_run  # noqa: F401  (the module-scoped finished tiny run)


def fields(path):
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_the_tiny_runs_gguf_reads_back_with_its_tokenizer_template_and_stop_token(tiny_run, qtype):  # noqa: F811
    out = export_run(str(tiny_run), out=str(tiny_run / f"gguf-{qtype}"), gguf=qtype)
    report = json.loads((out / "export_report.json").read_text())
    assert report["gguf_relative_logit_difference"] <= report["gguf_tolerance"]
    if qtype == "f32":
        assert report["gguf_max_abs_logit_difference"] < 1e-5  # the same float32 weights, another reader
    assert report["parity"]["end_of_turn"] == "<|im_end|>" and report["gguf_stop_tokens"] == ["<|im_end|>"]
    assert len(report["gguf_answers"]) == 5 and all(a["adapter"] == a["merged"] for a in report["gguf_answers"])
    meta = fields(out / "gguf" / "model.gguf")
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "gpt2"
    assert len(meta["tokenizer.ggml.tokens"]) == 259 and meta["tokenizer.ggml.tokens"][:3] == [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # control, then normal byte tokens
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (2, 0)
    tokenizer = AutoTokenizer.from_pretrained(out / "gguf", gguf_file="model.gguf")
    assert "<|im_start|>" in meta["tokenizer.chat_template"] and tokenizer.eos_token == "<|im_end|>"
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ $m.Role }}" in modelfile and 'SYSTEM """You are a concise' in modelfile
    assert "PARAMETER temperature 0" in modelfile  # greedy, as the run evaluated
    assert "ollama create" in (out / "gguf" / "README.md").read_text()


def test_q8_0_is_about_a_third_of_f32(tiny_run):  # noqa: F811
    sizes = {q: (tiny_run / f"gguf-{q}" / "gguf" / "model.gguf") for q in ("f32", "q8_0")}
    if not all(p.exists() for p in sizes.values()):
        pytest.skip("needs the two exports of the test above")
    ratio = sizes["q8_0"].stat().st_size / sizes["f32"].stat().st_size
    assert 0.25 < ratio < 0.4, ratio


def test_a_failed_check_writes_nothing_and_the_cli_says_why(tiny_run):  # noqa: F811
    target = tiny_run / "never"
    result = subprocess.run([sys.executable, "-m", "llmft.export.cli", str(tiny_run), "--gguf", "q8_0",
                             "--gguf-tolerance", "0", "--out", str(target)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "above the tolerance 0 for q8_0" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not target.exists()
    assert not list(tiny_run.glob(".never.partial-*"))
    assert "de-quantizing" not in result.stderr  # transformers' GGUF reading bar, off where stderr is no terminal


def test_a_tiny_qwen2_with_its_real_tokenizer_and_biases_reads_back(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer) + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases, so that a bias lost on the way shows in the logits
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    conversation = sample_conversation()
    eot = check_parity(tokenizer, conversation, [tokenizer.eos_token_id])["end_of_turn_id"]
    write_gguf(model, tmp_path / "q.gguf", "f32", "tiny-qwen2", vocab_writer(tokenizer, config.vocab_size, eot))
    meta = fields(tmp_path / "q.gguf")
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.tokens"]) == config.vocab_size and meta["tokenizer.ggml.token_type"][-1] == 5
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    reader = AutoTokenizer.from_pretrained(tmp_path, gguf_file="q.gguf")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Héllo, wörld 12345! 你好"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert reader(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-5)
    assert type(back).__name__ == "Qwen2ForCausalLM" and back.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp itself, where llama-cpp-python is installed (not in CI)
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(tmp_path / "q.gguf"), n_ctx=256, logits_all=True, verbose=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids[0].tolist()
        llm.eval(ids[0].tolist())
        with torch.no_grad():
            assert abs(torch.tensor(llm.scores[:ids.shape[1]]) - model(ids).logits[0]).max() < 1e-3


def test_pre_tokenizer_names_are_the_ones_llama_cpp_knows():
    """llama.cpp refuses to load a vocabulary whose ``tokenizer.ggml.pre`` it does not know ("unknown pre-tokenizer
    type"): GPT-2's byte-level split is ``gpt-2`` there, not ``gpt2`` (the tokenizer model's name), which an
    earlier llmft wrote for SmolLM2 and llama.cpp 0.3.36 (llama-cpp-python) refused to load."""
    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                     {"type": "ByteLevel", "use_regex": True}]}
    assert pre_tokenizer_name(digits) == "smollm"
    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": False}) == "default"


def test_an_unsupported_architecture_or_tokenizer_is_refused_in_one_paragraph():
    with pytest.raises(GGUFError, match=r"architecture 'phi'.*llama and qwen2 .*--merge"):
        check_supported(PhiConfig())
    yarn = Qwen2Config(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                        "original_max_position_embeddings": 32768})  # Qwen2.5's long-context option
    with pytest.raises(GGUFError, match="RoPE scaling 'yarn'.* llama3 RoPE scaling"):
        check_supported(yarn)
    word_level = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    with pytest.raises(GGUFError, match="byte-level .* SentencePiece-style .* this one is WordLevel"):
        vocab_writer(word_level, 2, None)


def test_parity_shows_both_token_sequences_when_inference_and_training_part():
    tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    # a reply that starts with a newline: "\n\n" is one token in training, "\n" alone ends the inference prompt
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nkubectl get pods"}]
    with pytest.raises(ParityError, match=r"not the prompt part of the training rendering: inference prompt \["):
        check_parity(tokenizer, conversation, [tokenizer.eos_token_id])
    with pytest.raises(ParityError, match=r"<\|im_end\|> \(151645\) .* not among the generation stop tokens"):
        check_parity(tokenizer, sample_conversation(), [tokenizer.pad_token_id])


def test_a_sentencepiece_vocabulary_round_trips_and_the_check_catches_what_gguf_cannot_say(tmp_path):
    """Phi-3's Llama vocabulary (byte fallback, like TinyLlama's): text and weights read back exactly; its chat
    markers strip the newline after them (``rstrip``), which GGUF cannot express, and the check says so."""
    tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", "phi-3-mini"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    write_gguf(model, tmp_path / "p.gguf", "f32", "tiny-spm", vocab_writer(tokenizer, 32064, 32007))
    meta = fields(tmp_path / "p.gguf")
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.token_type"][3:6] == [6, 6, 6]  # bytes
    assert meta["tokenizer.ggml.eot_token_id"] == 32007 and meta["tokenizer.ggml.add_space_prefix"] is True
    reader = AutoTokenizer.from_pretrained(tmp_path, gguf_file="p.gguf")
    for text in ["Héllo  wörld\n\n 12345 你好", " a leading space", "tabs\tand <0x0A> literally"]:
        assert reader(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)[
            "input_ids"], text
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="p.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 100, 2000, 29871, 32007]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    empty = {"input_ids": torch.zeros((0, 1), dtype=torch.long), "attention_mask": torch.zeros((0, 1))}
    with pytest.raises(GGUFError, match=r"encodes '<\|system\|>.* differently .* from token 1: run \[\d+"):
        _check_tokenizer(tokenizer, reader, empty, sample_conversation("Be brief."))


INDENTED = ["def f(x):\n    return x  # two  spaces\n\n        deeper", "a  b   c    d", "x = {'k':  [1,  2]}",
            "for i in range(3):\n    print(i)\n\tdone"]


def _merge_by_score(text: str, vocab: dict, scores: list) -> list:
    """SentencePiece's and llama.cpp's BPE on a vocabulary of scored pieces: the text with its word-boundary
    marks, one character a symbol, then again and again the adjacent pair whose joined piece scores highest."""
    symbols = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        pairs = [(scores[vocab[a + b]], -i) for i, (a, b) in enumerate(zip(symbols, symbols[1:])) if a + b in vocab]
        if not pairs:
            return [vocab[s] if s in vocab else vocab[f"<0x{ord(s):02X}>"] for s in symbols]  # ASCII: one byte
        i = -max(pairs)[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


def test_sentencepiece_scores_make_llama_cpps_merging_the_bpe_of_training():
    """llama.cpp tokenizes a SentencePiece-style GGUF by scores, not by the merges list transformers uses: the scores
    written make the two agree on runs of spaces (indented code), where scores in vocabulary order did not."""
    tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", "phi-3-mini"))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens, types = token_table(tokenizer, 32064)
    vocab = {t: i for i, t in enumerate(tokens)}
    scores = piece_scores(spec, tokens, types)
    in_order = [-float(i) if t == gguf.TokenType.NORMAL else 0.0 for i, t in enumerate(types)]
    for text in INDENTED:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert _merge_by_score(text, vocab, scores) == expected, text
    assert sum(_merge_by_score(t, vocab, in_order) != tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in INDENTED) == len(INDENTED)  # what vocabulary order gave


def test_llama_cpp_itself_reads_the_vocabularies_as_training_tokenized(tmp_path):
    """Where llama-cpp-python is installed (not a dependency; it builds llama.cpp): both kinds of vocabulary load
    there and tokenize as transformers does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    for name, vocab_size in (("phi-3-mini", 32064), ("qwen2-instruct", None)):
        tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", name))
        vocab_size = vocab_size or len(tokenizer)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        write_gguf(model, tmp_path / f"{name}.gguf", "f32", name, vocab_writer(tokenizer, vocab_size, None))
        llm = llama_cpp.Llama(model_path=str(tmp_path / f"{name}.gguf"), vocab_only=True, verbose=False)
        for text in [*INDENTED, "Héllo, wörld 12345! 你好"]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                tokenizer(text, add_special_tokens=False)["input_ids"], (name, text)
    from llmft.export.gguf_vocab import llama_cpp_encoder

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    for legacy in (False, True):  # llama_cpp_encoder's rule, and that a Llama 2-style normalizer needs none
        tokenizer = _phi3_variant(legacy)
        write_gguf(model, tmp_path / "v.gguf", "f32", "v", vocab_writer(tokenizer, 32064, None))
        llm = llama_cpp.Llama(model_path=str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
        encode = llama_cpp_encoder(tokenizer)
        for text in SPECIAL_TEXTS:
            expected = encode(text) if encode else tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, (legacy, text)


def _phi3_variant(legacy: bool):
    """Phi-3's vocabulary without its markers' rstrip (which GGUF cannot say, tested above): as it is (Metaspace,
    ``prepend_scheme: first``), or with Llama 2's normalizer in its place (``legacy``, Llama 2's older conversion)."""
    from tokenizers import Tokenizer

    phi3 = AutoTokenizer.from_pretrained(realdata("tokenizers", "phi-3-mini"))
    spec = json.loads(phi3.backend_tokenizer.to_str())
    for token in spec["added_tokens"]:
        token["rstrip"] = token["lstrip"] = False
    if legacy:
        spec["pre_tokenizer"] = None
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = phi3.chat_template
    return tokenizer


SPECIAL_TEXTS = ["<s>hello", "a</s>\nb", "<s><|user|>\nhi<|end|>\n<|assistant|>\n", "plain  text\n    indented"]


def test_the_export_refuses_a_tokenizer_llama_cpp_would_read_otherwise_after_special_tokens():
    """llama.cpp starts the text after a special token with the word-boundary mark; Phi-3's Metaspace puts it
    before the first word only, so the check fails with both sequences; Llama 2's normalizer agrees and passes."""
    from llmft.export.gguf_vocab import llama_cpp_encoder

    first, legacy = _phi3_variant(legacy=False), _phi3_variant(legacy=True)
    assert llama_cpp_encoder(legacy) is None and llama_cpp_encoder(first)("<s>hello") == [1, 22172]
    assert first("<s>hello", add_special_tokens=False)["input_ids"] == [1, 12199]  # "hello" without the mark
    empty = {"input_ids": torch.zeros((0, 1), dtype=torch.long), "attention_mask": torch.zeros((0, 1))}
    with pytest.raises(GGUFError, match=r"llama.cpp would encode .* token \d+: run \[\d+.*llama.cpp \[\d+.*--merge"):
        _check_tokenizer(first, first, empty, sample_conversation("Be brief."))
    _check_tokenizer(legacy, legacy, empty, sample_conversation("Be brief."))


def test_llama3_rope_scaling_goes_into_rope_freqs_as_llama_cpp_reads_it(tmp_path):
    """A tiny random Llama with Llama 3.2's RoPE scaling (its original context shrunk to 32 so that the scaling
    shows within a short text): transformers' GGUF reader builds plain RoPE and leaves ``rope_freqs`` unread, so
    its logits part from the model's; dividing its frequencies by the file's factors, as llama.cpp does, gives the
    model's logits back."""
    tokenizer = AutoTokenizer.from_pretrained(realdata("tokenizers", "qwen2-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 32})
    model = LlamaForCausalLM(config).eval()
    check_supported(config)
    write_gguf(model, tmp_path / "l.gguf", "f32", "tiny-llama3", vocab_writer(tokenizer, config.vocab_size, None))
    factors = gguf.GGUFReader(tmp_path / "l.gguf").get_tensor(-1)
    assert factors.name == "rope_freqs.weight" and factors.data.shape == (8,)  # head_dim 16: 8 frequencies
    assert factors.data[0] == 1.0 and factors.data[-1] == 32.0  # high frequencies kept, low ones divided by 32
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="l.gguf", dtype=torch.float32).eval()
    ids = torch.arange(100, 300).reshape(1, -1)
    with torch.no_grad():
        expected = model(ids).logits
        assert (back(ids).logits - expected).abs().max() > 1e-3  # plain RoPE parts (logits of 0.2 here)
        assert apply_rope_factors(back, tmp_path / "l.gguf")
        assert torch.allclose(back(ids).logits, expected, atol=1e-5)
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp itself, where llama-cpp-python is installed (not in CI)
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(tmp_path / "l.gguf"), n_ctx=256, logits_all=True, verbose=False)
        llm.eval(ids[0].tolist())
        assert abs(torch.tensor(llm.scores[:ids.shape[1]]) - expected[0]).max() < 1e-3


def test_the_export_line_says_whether_parted_answers_parted_at_near_ties():
    from llmft.export.cli import _ties

    def report(*margins):
        return {"gguf_max_abs_logit_difference": 1.0, "gguf_answers": [{"margin_where_parted": m} for m in margins]}

    assert _ties(report(None, None)) == ""
    assert "at most 0.11 logits apart, within the 1 by which" in _ties(report(None, 0.107, -0.0001))
    assert "3 logits apart, more than the 1" in _ties(report(0.01, 3.0))

