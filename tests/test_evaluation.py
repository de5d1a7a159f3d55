"""Evaluation: perplexity checked by hand, deterministic batched generation, offline metrics, the report."""

import json
import math

import pytest
import torch

from llmft.evaluation import EvalData, Perplexity, build_eval_report, samples_markdown
from llmft.evaluation.generation import can_pair, generate, generate_pairs
from llmft.evaluation.scores import corpus_scores, score_pairs
from llmft.builders import build
from llmft.pipeline import run
from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny(cache_dir):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", "model=tiny"])
    return build(cfg.model, cache_dir=cache_dir)


def test_perplexity_matches_a_hand_computation(tiny):
    model, tok = tiny.model, tiny.tokenizer
    examples = [{"input_ids": [5, 9, 17, 33, 2], "labels": [-100, -100, 17, 33, 2]},
                {"input_ids": [7, 8], "labels": [-100, 8]}]
    figures = Perplexity(batch_size=2)(model, tok, EvalData(records=[], tokenized=examples))
    nll = []
    with torch.no_grad():
        for ex in examples:
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0].float(), dim=-1)
            nll += [-logp[t - 1, ex["labels"][t]].item() for t in range(1, len(ex["labels"])) if ex["labels"][t] != -100]
    assert figures["total_tokens"] == len(nll) == 4 and figures["num_samples"] == 2
    assert figures["eval_loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert figures["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)


def test_generation_is_greedy_deterministic_and_batching_does_not_change_answers(tiny):
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a much longer question?"}]]
    together = generate(tiny.model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=2)
    alone = [generate(tiny.model, tiny.tokenizer, [c], max_new_tokens=12, batch_size=1)[0] for c in conversations]
    assert together == alone  # left padding is masked correctly
    assert together == generate(tiny.model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=2)
    assert tiny.tokenizer.padding_side == "right"  # restored for training


def test_paired_generation_gives_each_model_its_own_answers_and_the_head_a_contiguous_input(tiny):
    """generate_pairs answers for the base model (adapter off) and the fine-tuned one in the same batches; each
    half equals what that model alone answers. The output projection sees contiguous inputs (contiguous_head)."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
    assert can_pair(model)
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a much longer question?"}],
                     [{"role": "user", "content": "third"}]]
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, a: seen.append(a[0].is_contiguous()))
    base, tuned = generate_pairs(model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=2)
    hook.remove()
    assert seen and all(seen)
    assert tuned == generate(model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=2)
    with model.disable_adapter():
        assert base == generate(model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=2)
    assert base != tuned  # the adapter changes the answers, so each half is really told apart
    dora = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert not can_pair(dora) and not can_pair(tiny.model)  # peft cannot mix DoRA; a model without adapter


def test_metric_modules_load_offline_and_compute_known_values():
    scores = corpus_scores(["the cat sat on the mat", "yes"], ["the cat sat on the mat", "no"])
    assert scores["exact_match"] == 0.5
    assert scores["rouge_l"] == 0.5 and 0 < scores["chrf"] < 100 and 0 <= scores["bleu"] <= 100
    assert score_pairs(["a b c"], ["a b c"])[0] == {"exact_match": 1.0, "rouge_l": 1.0, "chrf": 100.0}


def test_report_and_samples_put_base_and_fine_tuned_side_by_side():
    base = {"perplexity": {"eval_loss": 2.0, "perplexity": math.exp(2.0), "num_samples": 3, "total_tokens": 30},
            "metrics": {"metrics": {"chrf": 10.0}},
            "prompts": {"answers": [{"prompt": "q?", "answer": "meh", "reference": "r", "scores": {"chrf": 1.0}}]}}
    tuned = {"perplexity": {"eval_loss": 1.0, "perplexity": math.exp(1.0), "num_samples": 3, "total_tokens": 30},
             "metrics": {"metrics": {"chrf": 30.0}},
             "prompts": {"answers": [{"prompt": "q?", "answer": "good", "reference": "r", "scores": {"chrf": 9.0}}]}}
    report = build_eval_report(base, tuned)
    assert report["delta"]["eval_loss"] == -1.0 and report["metrics"]["delta"]["chrf"] == 20.0
    assert report["prompt_results"] == [{"prompt": "q?", "base": "meh", "finetuned": "good", "reference": "r",
                                         "scores": {"base": {"chrf": 1.0}, "finetuned": {"chrf": 9.0}}}]
    text = samples_markdown(report, "t")
    assert "| perplexity | 7.3891 | 2.7183 | -4.6708 |" in text and "> meh" in text and "> good" in text


def test_full_eval_and_periodic_validation_in_a_tiny_run(make_cfg, tmp_path):
    cfg = make_cfg([*TINY, "eval=full", "eval.metrics.max_new_tokens=8", "trainer.eval_every=3"])
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in validation] == [3, 6]
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert set(report["metrics"]["base"]) == {"exact_match", "rouge_l", "bleu", "chrf"}
    assert validation[-1]["eval_loss"] == pytest.approx(report["eval_loss"], rel=1e-6)  # same model, same data
    assert "scores" in report["prompt_results"][0]
    assert (tmp_path / "samples.md").read_text().startswith("# tiny-llama: base vs fine-tuned")
