"""End to end on the tiny model: the run folder's files and what is in them; QLoRA; seeds; a non-finite loss."""

import json
import math

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmft.errors import NonFiniteLossError
from llmft.builders import build
from llmft.pipeline import run
from tests.conftest import TINY, TINY_NO_EVAL


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *TINY])
    out = tmp_path_factory.mktemp("tiny-run")
    return run(cfg, out, overrides=TINY), out, cfg


def test_tiny_run_leaves_the_promised_files(tiny_run):
    summary, out, _ = tiny_run
    assert {"adapter", "metrics.jsonl", "eval_report.json", "summary.json"} <= {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in (out / "adapter").iterdir()}
    assert summary["status"] == "completed"


def test_metrics_jsonl_has_one_line_per_step_with_every_field(tiny_run):
    _, out, _ = tiny_run
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for row in rows:
        assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_memory_mb"} <= set(row)
        assert math.isfinite(row["loss"]) and row["tokens_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"], "the training loss should fall on 16 records"
    assert 0 < rows[0]["learning_rate"] <= 3e-3  # warmup never trains a step at learning rate 0


def test_summary_records_the_figures(tiny_run):
    summary, out, _ = tiny_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("final_train_loss", "eval_loss", "perplexity", "trainable_params", "total_params", "tokens_per_s",
                "peak_memory_mb", "duration_s", "overrides"):
        assert key in on_disk, key
    assert 0 < on_disk["trainable_params"] < on_disk["total_params"]
    assert on_disk["overrides"] == TINY


def test_eval_report_has_base_and_fine_tuned_side_by_side(tiny_run):
    _, out, _ = tiny_run
    report = json.loads((out / "eval_report.json").read_text())
    assert {"eval_loss", "perplexity", "num_samples", "total_tokens", "base", "delta", "prompt_results"} <= set(report)
    assert report["num_samples"] == 12 and report["base"]["num_samples"] == 12
    assert report["perplexity"] == pytest.approx(math.exp(report["eval_loss"]))
    assert report["delta"]["eval_loss"] == pytest.approx(report["eval_loss"] - report["base"]["eval_loss"])
    assert len(report["prompt_results"]) == 5
    assert {"prompt", "base", "finetuned", "reference"} <= set(report["prompt_results"][0])


def test_saved_adapter_reloads_onto_the_base_and_reproduces_the_eval_loss(tiny_run, cache_dir):
    summary, out, cfg = tiny_run
    loaded = build(cfg.model, cache_dir=cache_dir)
    model = PeftModel.from_pretrained(loaded.model, out / "adapter")
    from llmft.data import load_splits, tokenize_records
    from llmft.evaluation import EvalData, Perplexity

    splits = load_splits(build(cfg.data_format), cfg.data.path)
    val, _ = tokenize_records(splits.val, loaded.tokenizer, cfg.data.max_seq_length)
    figures = Perplexity()(model, loaded.tokenizer, EvalData(records=splits.val, tokenized=val))
    assert figures["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-4)


def test_same_seed_same_loss_curve(make_cfg, tmp_path):
    cfg = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=3"])
    fresh = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=3", f"paths.cache_dir={tmp_path / 'fresh-cache'}"])
    run(fresh, tmp_path / "a")  # builds the tiny model first: that must not change the random state
    run(cfg, tmp_path / "b")
    losses = [[r["loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl")] for d in "ab"]
    assert losses[0] == losses[1]
    other = make_cfg([*TINY_NO_EVAL, "trainer.max_steps=3", "seed=7"])
    run(other, tmp_path / "c")
    assert [r["loss"] for r in read_jsonl(tmp_path / "c" / "metrics.jsonl")] != losses[0]


def test_qlora_nf4_quantizes_to_linear4bit_and_the_loss_falls(make_cfg, tmp_path):
    from llmft.adapters import apply_lora

    cfg = make_cfg([*TINY, "quantization=nf4", "trainer.max_steps=10"])
    loaded = build(cfg.model, quantization_config=build(cfg.quantization), cache_dir=cfg.paths.cache_dir)
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert layers[0].weight.quant_type == "nf4" and layers[0].weight.quant_state.nested  # double quantization
    peft_model = apply_lora(loaded.model, build(cfg.lora), gradient_checkpointing=False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in peft_model.modules())

    summary = run(cfg, tmp_path)  # the base evaluation runs first: a forward without gradients before training
    assert summary["status"] == "completed" and summary["perplexity"] < summary["base_perplexity"]
    assert all(r["grad_norm"] > 0 for r in read_jsonl(tmp_path / "metrics.jsonl"))


def test_a_non_finite_loss_stops_training_and_names_the_step(make_cfg, tmp_path):
    from llmft.adapters import apply_lora
    from llmft.data import load_splits, pad_collate, tokenize_records
    from llmft.loop import Hardware
    from llmft.recording import RunRecorder

    cfg = make_cfg(TINY_NO_EVAL)
    loaded = build(cfg.model, cache_dir=cfg.paths.cache_dir)
    model = apply_lora(loaded.model, build(cfg.lora), gradient_checkpointing=False)
    splits = load_splits(build(cfg.data_format), cfg.data.path, max_samples=8)
    train, _ = tokenize_records(splits.train, loaded.tokenizer, 384)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at optimizer step 1"):
        build(cfg.trainer).fit(model, train, lambda f: pad_collate(f, loaded.tokenizer.pad_token_id),
                               batch_plan=lambda epoch: [[0, 1], [2, 3]],
                               hardware=Hardware(), optimizer=build(cfg.hardware.optimizer),
                               recorder=RunRecorder(tmp_path))


def test_a_failed_run_records_status_and_reason_and_keeps_its_folder(make_cfg, tmp_path):
    from llmft.errors import DataError

    data = tmp_path / "data.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(good) + "\n" + '{"id": "b", "messages": [}\n')
    with pytest.raises(DataError, match=r"data.jsonl:2:\d+: invalid JSON"):
        run(make_cfg([*TINY_NO_EVAL, f"data.path={data}", "data.strict=true"]), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "invalid JSON" in summary["error"]


def test_gradient_checkpointing_gives_the_same_loss(make_cfg, tmp_path):
    plain = run(make_cfg([*TINY_NO_EVAL, "trainer.max_steps=2", "lora.lora_dropout=0"]), tmp_path / "a")
    ckpt = run(make_cfg([*TINY_NO_EVAL, "trainer.max_steps=2", "lora.lora_dropout=0",
                         "hardware.gradient_checkpointing=true"]),
               tmp_path / "b")
    assert ckpt["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=1e-6)


def test_a_gpu_profile_without_cuda_stops_before_loading(make_cfg, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from llmft.errors import ConfigError

    with pytest.raises(ConfigError, match="hardware=gtx1660-6gb needs CUDA"):
        run(make_cfg([*TINY, "hardware=gtx1660-6gb"]), tmp_path)


def test_merged_weights_differ_from_base_after_training(tiny_run, cache_dir):
    _, out, cfg = tiny_run
    base = AutoModelForCausalLM.from_pretrained(json.loads((out / "adapter" / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"])
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "training should move lora_B away from zero"
