"""The memory plan's terms for the tiny model, computed by hand; architecture figures; suggestions; every profile."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmft.config.location import CONFIG_DIR
from llmft.errors import ConfigError, ModelLoadError
from llmft.models.loading import check_arch
from llmft.models.tiny import byte_level_tokenizer
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.arch import BYTE_LEVEL_VOCAB, find_arch, from_config
from llmft.planning.fit import suggest
from llmft.planning.plan import (BITSANDBYTES_BYTES, CPU_BASELINE_BYTES, CPU_RETENTION, CUDA_ALLOCATOR_SLACK,
                                 CUDA_CONTEXT_BYTES)
from llmft.planning.setup import GIB

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
PROFILES = sorted(p.stem for p in (CONFIG_DIR / "hardware").glob("*.yaml"))

# The tiny model (conf/model/tiny.yaml): h=64, I=128, 2 layers, 4 query heads and 2 key-value heads of 16, a
# 259-token vocabulary, untied head. Per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64.
TINY_LINEAR = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128          # 36,864 per layer
TINY_PARAMS = 2 * 259 * 64 + 2 * TINY_LINEAR + (2 * 2 + 1) * 64             # embeddings + head, linears, norms
TINY_LORA = 2 * 16 * ((64 + 64) + (64 + 32))                                   # r=16 on q (64->64), v (64->32)


def terms(plan):
    return {t.key: t.bytes for t in plan.terms}


@pytest.fixture
def tiny(make_cfg):
    """The tiny model's default run: CPU, fp32, micro-batch 8, sequence 512, LoRA r=16 on q_proj/v_proj, with the
    loss over full logits (the by-hand figures; the chunked loss has tests of its own below)."""
    return replace(setup_from_cfg(make_cfg(["model=tiny", "hardware.precision=fp32"])), loss_chunk_tokens=0)


def test_tiny_figures_come_from_its_arch_and_the_byte_level_tokenizer(tiny):
    assert BYTE_LEVEL_VOCAB == len(byte_level_tokenizer()) == 259
    a = tiny.arch
    assert (a.vocab_size, a.hidden_size, a.num_hidden_layers, a.num_key_value_heads, a.head_dim) == (259, 64, 2, 2, 16)
    assert a.total_params() == TINY_PARAMS == 107_200
    assert "model.arch of tiny-llama" in a.source


def test_tiny_weights_lora_gradients_and_adamw_by_hand(tiny):
    t = terms(plan_memory(tiny))
    assert t["base_weights"] == TINY_PARAMS * 4                  # fp32 on the CPU
    assert t["lora_weights"] == TINY_LORA * 4 == 28_672          # 7,168 fp32 adapter values
    assert t["gradients"] == TINY_LORA * 4
    assert t["optimizer_states"] == 2 * TINY_LORA * 4            # AdamW: exp_avg + exp_avg_sq


def test_tiny_activations_and_logits_by_hand(tiny):
    tokens = 8 * 512
    norm = 4 * 64 + 4                                   # RMSNorm keeps its fp32 input and 1/rms
    lora = 2 * (64 * 4 + 64 * 1 + 16 * 4)               # q, v: fp32 input of lora_A, bool dropout mask, lora_A out
    attention = 4 * (2 * 4 * 16 + 2 * 2 * 16) + 4 * 4   # q, out; k, v (2 heads: no mask, llmft.loss); lse
    mlp = 2 * 4 * 128                                   # gate, up (llmft.fused_blocks)
    layer = 2 * norm + lora + attention + mlp
    first = norm + (lora - 2 * 64 * 1) + attention + mlp  # the embeddings carry no gradient: no input norm, no masks
    scaled_b = 2 * 16 * (64 + 32) * 4  # the fused layer keeps s x B of q and v (fp32) in each of the 2 layers
    expected = (first + layer + norm) * tokens + scaled_b  # + the final norm
    t = terms(plan_memory(tiny))
    assert t["activations"] == expected
    assert t["logits"] == tokens * 259 * (4 + 4 + 4 + 4)   # logits, log-softmax, its gradient, the loss gradient
    assert "evaluation" not in t                             # perplexity at batch 8 stays below the training step
    assert not tiny.bitsandbytes  # a run without quantization keeps bitsandbytes out of its process
    baseline = CPU_BASELINE_BYTES - BITSANDBYTES_BYTES
    assert t["overhead"] == pytest.approx(baseline + CPU_RETENTION * (expected + t["logits"]))
    with_it = terms(plan_memory(replace(tiny, bitsandbytes=True)))
    assert with_it["overhead"] - t["overhead"] == pytest.approx(BITSANDBYTES_BYTES)


def test_chunked_loss_holds_one_chunk_of_logits_and_its_hidden_states(tiny):
    chunked = terms(plan_memory(replace(tiny, loss_chunk_tokens=1000)))
    tokens = 8 * 512
    # one chunk of fp32 logits turned into probabilities in place (the head's gradient by hand); the labelled
    # positions' hidden states and their gradient
    assert chunked["logits"] == 1000 * 259 * 4 + tokens * 64 * (4 + 4)
    assert chunked["activations"] == terms(plan_memory(tiny))["activations"]
    assert terms(plan_memory(replace(tiny, loss_chunk_tokens=8192)))["logits"] == tokens * 259 * 4 + tokens * 64 * 8
    bf16 = replace(tiny, loss_chunk_tokens=1000, precision="bf16")  # 16-bit logits and their fp32 copy
    assert terms(plan_memory(bf16))["logits"] == 1000 * 259 * (2 + 4) + tokens * 64 * (2 + 4)
    trained_head = replace(tiny, loss_chunk_tokens=1000, lora=replace(tiny.lora, modules_to_save=("lm_head",)))
    pairs = replace(tiny, loss_chunk_tokens=1000, rows_per_example=2)
    for through_autograd in (trained_head, pairs):  # the chunk recomputed in the backward pass: 16 B a logit
        assert not through_autograd.head_by_hand
        assert terms(plan_memory(through_autograd))["logits"] >= 1000 * 259 * 16


def test_llama_1b_at_4096_tokens_on_a_gtx1660_needs_under_1_gib_for_the_loss(make_cfg):
    setup = setup_from_cfg(make_cfg(["model=llama-3.2-1b", "hardware=gtx1660-6gb", "data.max_seq_length=4096"]))
    full, chunked = terms(plan_memory(replace(setup, loss_chunk_tokens=0))), terms(plan_memory(setup))  # default
    assert full["logits"] > 13 * GIB and full["evaluation"] > 26 * GIB  # the figures with full logits
    # evaluation: what its no-grad pass (one chunk of logits, one layer's transients) needs above the training step,
    # which checkpointing keeps small on this profile
    assert chunked["logits"] < 1 * GIB and chunked.get("evaluation", 0) < 1.5 * GIB


def test_nf4_weights_count_double_quantization_and_the_fp32_upcast(tiny):
    t = terms(plan_memory(replace(tiny, quantization="nf4", double_quant=True)))
    linear_weights = 2 * TINY_LINEAR
    per_weight = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + 8-bit absmax per 64 + fp32 absmax per 256 blocks
    assert t["base_weights"] == pytest.approx(linear_weights * per_weight + (TINY_PARAMS - linear_weights) * 4)
    fp4 = terms(plan_memory(replace(tiny, quantization="fp4", double_quant=False)))
    assert fp4["base_weights"] == pytest.approx(linear_weights * (0.5 + 4 / 64) + (TINY_PARAMS - linear_weights) * 4)
    int8 = terms(plan_memory(replace(tiny, quantization="int8")))
    scales = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64) * 4  # one fp32 scale per output row
    assert int8["base_weights"] == linear_weights + scales + (TINY_PARAMS - linear_weights) * 4


def test_8bit_optimizers_keep_32_bit_states_for_small_tensors(tiny, make_cfg):
    paged = replace(tiny, optimizer="bitsandbytes.optim.PagedAdamW8bit", device="cuda", precision="fp16")
    assert terms(plan_memory(paged))["optimizer_states"] == 2 * TINY_LORA * 4  # every tiny adapter < 4096 values
    big = setup_from_cfg(make_cfg(["model=tinyllama-1.1b", "quantization=nf4", "hardware=gtx1660-6gb"]))
    a_q, b_q, a_v, b_v = 16 * 2048, 2048 * 16, 16 * 2048, 256 * 16  # r=16; q: 2048->2048, v: 2048->256
    eight_bit = [2 * (n + -(-n // 256) * 4) for n in (a_q, b_q, a_v, b_v)]  # two uint8 states + fp32 absmax / 256
    assert terms(plan_memory(big))["optimizer_states"] == 22 * sum(eight_bit)


def test_dora_adds_a_magnitude_per_output_and_all_linear_targets_every_linear(tiny):
    dora = replace(tiny, lora=replace(tiny.lora, use_dora=True))
    assert terms(plan_memory(dora))["lora_weights"] == (TINY_LORA + 2 * (64 + 32)) * 4
    every = replace(tiny, lora=replace(tiny.lora, target_modules="all-linear"))
    shapes = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    assert terms(plan_memory(every))["lora_weights"] == 2 * sum(16 * (i + o) for i, o in shapes) * 4
    regex = replace(tiny, lora=replace(tiny.lora, target_modules=r".*\.(gate|up)_proj"))
    assert [lin.name for lin in regex.lora.targets(regex.arch)] == ["mlp.gate_proj", "mlp.up_proj"]


def test_checkpointing_keeps_one_input_per_layer_and_recomputes_one_layer(tiny):
    plain, ckpt = plan_memory(tiny), plan_memory(replace(tiny, gradient_checkpointing=True))
    tokens = 8 * 512
    kept = 2 * 64 * 4 * tokens                                  # each layer's fp32 input
    assert terms(ckpt)["activations"] >= kept + (4 * 64 + 4) * tokens
    assert terms(ckpt)["activations"] < terms(plain)["activations"]
    assert terms(ckpt)["logits"] == terms(plain)["logits"]


def test_16_bit_on_a_gpu_and_the_cuda_overhead(tiny):
    gpu = plan_memory(replace(tiny, device="cuda", precision="bf16"))
    t = terms(gpu)
    assert t["base_weights"] == TINY_PARAMS * 2                   # loaded in bf16
    assert t["lora_weights"] == TINY_LORA * 4                     # peft keeps adapters in fp32
    assert t["logits"] == 8 * 512 * 259 * (2 + 4 + 4 + 4)         # bf16 logits, fp32 log-softmax and gradients
    peak = sum(v for k, v in t.items() if k != "overhead")
    assert t["overhead"] == pytest.approx(CUDA_CONTEXT_BYTES + CUDA_ALLOCATOR_SLACK * peak)
    assert gpu.allocated_bytes == pytest.approx(peak)             # the context is outside torch's allocator


@pytest.mark.parametrize("model", MODELS)
def test_every_model_plans_offline_and_its_parameter_count_matches_transformers(make_cfg, model):
    setup = setup_from_cfg(make_cfg([f"model={model}"]))
    arch = setup.arch
    if model == "tiny":
        config = AutoConfig.for_model("llama", vocab_size=259, tie_word_embeddings=False, **make_cfg(
            ["model=tiny"]).model.arch)
    else:
        config = AutoConfig.for_model(**{k: v for k, v in make_cfg([f"model={model}"]).model.arch.items()})
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    assert arch.total_params() == built.num_parameters()
    assert plan_memory(setup).total_bytes > 0


def test_yaml_figures_match_the_converted_smollm2_config_when_present(make_cfg):
    cache = Path(os.environ.get("LLMFT_CACHE_DIR", "~/.cache/llmft")).expanduser()
    converted = cache / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct" / "config.json"
    if not converted.is_file():
        pytest.skip("the default model has not been converted on this machine (python -m llmft.models)")
    cfg = make_cfg(["model=smollm2-135m"])
    check_arch(AutoConfig.from_pretrained(converted.parent), cfg.model.arch, "smollm2")  # raises on a mismatch
    found = find_arch(cfg.model, str(cache))
    assert found.source == str(converted)
    assert found == from_config(json.loads(converted.read_text()), found.source)
    assert found.total_params() == from_config(dict(cfg.model.arch), "yaml").total_params()


def test_a_wrong_figure_is_caught_when_the_model_loads():
    config = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    with pytest.raises(ModelLoadError, match="hidden_size=128 \\(the model has 64\\)"):
        check_arch(config, {"hidden_size": 128, "num_hidden_layers": 2}, "m")
    check_arch(config, {"hidden_size": 64, "head_dim": 16, "num_key_value_heads": 4}, "m")  # derived defaults


def test_a_model_without_figures_or_of_an_unknown_architecture_is_explained(make_cfg):
    with pytest.raises(ConfigError, match="no architecture figures for some/model"):
        setup_from_cfg(make_cfg(["model=tinyllama-1.1b", "model.name_or_path=some/model", "model.arch=null"]))
    with pytest.raises(ConfigError, match="is a gpt2"):
        from_config({"model_type": "gpt2", "hidden_size": 8}, "x")


def test_suggestions_fit_and_keep_the_effective_batch(tiny):
    tight = replace(tiny, budget_gb=(CPU_BASELINE_BYTES + 30 * 2**20) / GIB)
    assert not plan_memory(tight).fits
    found = suggest(tight)
    assert found and all(s.plan.fits for s in found)
    first = found[0]
    assert set(first.changes) == {"hardware.micro_batch_size", "hardware.gradient_accumulation_steps"}
    m, acc = first.changes["hardware.micro_batch_size"], first.changes["hardware.gradient_accumulation_steps"]
    assert m < 8 and m * acc == 8
    assert not plan_memory(replace(tight, micro_batch_size=m * 2, gradient_accumulation_steps=acc // 2)).fits
    assert any("data.max_seq_length" in s.changes for s in found)
    assert suggest(replace(tiny, budget_gb=0.1)) == []  # below the process baseline nothing fits


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_budget_is_read_in_gib_and_checked(make_cfg, profile):
    cfg = make_cfg([f"hardware={profile}"])
    default = plan_memory(setup_from_cfg(cfg))
    assert default.budget_bytes == cfg.hardware.memory_budget_gb * GIB
    assert default.fits, f"the default model should fit hardware={profile}: {default.verdict}"
    huge = plan_memory(setup_from_cfg(make_cfg([f"hardware={profile}", "model=phi-2", "data.max_seq_length=2048",
                                                "hardware.micro_batch_size=64"])))
    assert not huge.fits and huge.verdict.startswith("does not fit")
    assert all(s.plan.fits for s in suggest(huge.setup))
