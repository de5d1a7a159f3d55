"""Preference objectives (DPO, ORPO) on the tiny model: the losses and gradients against plain full-logit
implementations of the formulas, the reference model as the base, pair tokenization, refusals, and end-to-end runs
on the real ../shared/realdata/preference/dpo_en_demo.json."""

import copy
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from llmft.adapters import apply_lora
from llmft.data.pairs import pair_collate, tokenize_pair, tokenize_pairs
from llmft.data.records import PreferencePair
from llmft.data.tokenize import IGNORE_INDEX
from llmft.errors import ConfigError, DataError
from llmft.evaluation import EvalData, PreferenceAccuracy
from llmft.objectives import DPO, ORPO
from llmft.objectives.preference import orpo_losses, reference_model
from llmft.builders import build, read_splits, tokenize_split
from llmft.pipeline import run
from tests.conftest import TINY, TINY_NO_EVAL, realdata

DEMO = ["data.path=../shared/realdata/preference/dpo_en_demo.json"]


@pytest.fixture
def tiny(make_cfg):
    """The tiny model with LoRA, a plain copy of its base, its tokenizer, and 4 real pairs as one batch."""
    realdata("preference", "dpo_en_demo.json")
    cfg = make_cfg([*TINY_NO_EVAL, *DEMO, "objective=dpo", "lora.lora_dropout=0.0", "data.max_seq_length=64"])
    loaded = build(cfg.model, cache_dir=cfg.paths.cache_dir)
    base = copy.deepcopy(loaded.model).eval()
    model = apply_lora(loaded.model, build(cfg.lora), gradient_checkpointing=False)
    records = read_splits(cfg).train[:4]
    pairs, _ = tokenize_split(cfg, loaded.tokenizer, records, "train", build(cfg.objective))
    batch = pair_collate([pairs[i] for i in range(4)], loaded.tokenizer.pad_token_id)
    return model, base, batch


def perturb(model) -> None:
    """Non-zero LoRA B matrices, so that the policy differs from the reference."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def plain_logps(model, batch):
    """Per row: summed and mean log-probability of the labelled tokens, from the full logits, one row at a time."""
    sums, means = [], []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        n = int(mask.sum())
        logits = model(input_ids=ids[None, :n]).logits[0, :-1].float()
        targets = labels[1:n]
        keep = targets != IGNORE_INDEX
        token_logps = torch.log_softmax(logits, -1)[keep].gather(-1, targets[keep][:, None])[:, 0]
        sums.append(token_logps.sum())
        means.append(token_logps.mean())
    return torch.stack(sums), torch.stack(means)


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_gradient(ours, expected):
    """The two gradients, each over all LoRA parameters, differ by under 1e-4 of the expected one's norm (fp32)."""
    ours, expected = (torch.cat([g.flatten() for _, g in sorted(grads.items())]) for grads in (ours, expected))
    assert expected.norm() > 0 and float((ours - expected).norm() / expected.norm()) < 1e-4


def plain_dpo(model, base, batch, beta, smoothing, ipo):
    policy_sum, policy_mean = plain_logps(model, batch)
    with torch.no_grad():
        ref_sum, ref_mean = plain_logps(base, batch)
    policy, ref = (policy_mean, ref_mean) if ipo else (policy_sum, ref_sum)
    n = policy.shape[0] // 2
    h = (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])
    if ipo:
        return ((h - 1 / (2 * beta)) ** 2).sum()
    # log(sigmoid(x)) written out as -log(1 + e^-x), in float64 (log(1 - sigmoid(x)) in float32 loses digits)
    x = (beta * h).double()
    return (-(1 - smoothing) * -torch.log1p(torch.exp(-x)) - smoothing * -torch.log1p(torch.exp(x))).sum().float()


def test_dpo_at_step_0_is_log_2_and_the_reference_is_the_base_model(tiny):
    model, base, batch = tiny
    model.eval()
    objective = DPO(beta=0.1)
    loss, figures = objective.loss_and_figures(model, batch)
    assert abs(float(loss.detach()) / objective.units(batch) - math.log(2)) < 1e-6
    assert figures == {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margin": 0.0, "rewards/accuracy": 0.0}
    perturb(model)
    with torch.no_grad(), reference_model(model):
        reference = objective.logps(model, batch)
    expected = plain_logps(base, batch)[0]
    torch.testing.assert_close(torch.cat(reference), expected, rtol=1e-6, atol=0)  # fp32 sums of ~60 tokens
    with torch.no_grad():
        assert (torch.cat(objective.logps(model, batch)) - expected).abs().max() > 1e-3  # the adapter is back on


@pytest.mark.parametrize("beta,smoothing,loss_type", [(0.1, 0.0, "sigmoid"), (0.5, 0.2, "sigmoid"),
                                                      (0.1, 0.0, "ipo")])
def test_dpo_loss_and_gradient_equal_a_plain_implementation(tiny, beta, smoothing, loss_type):
    model, base, batch = tiny
    model.eval()
    perturb(model)
    loss, _ = DPO(beta=beta, label_smoothing=smoothing, loss_type=loss_type, chunk_tokens=7).loss_and_figures(
        model, batch)
    loss.backward()
    ours = lora_grads(model)
    model.zero_grad()
    expected = plain_dpo(model, base, batch, beta, smoothing, loss_type == "ipo")
    expected.backward()
    # the summed log-probabilities (~60 tokens each) agree to the fp32 rounding of a padded batch against one row at
    # a time, which the loss sees scaled by beta: beta=0.5 put the two losses 1.7e-5 apart (of 2.49) on one machine
    assert math.isclose(float(loss), float(expected), rel_tol=1e-6, abs_tol=1e-4)
    assert_same_gradient(ours, lora_grads(model))


def test_orpo_loss_and_gradient_equal_a_plain_implementation(tiny):
    model, _, batch = tiny
    model.eval()
    perturb(model)
    loss, figures = ORPO(beta=0.2).loss_and_figures(model, batch)
    loss.backward()
    ours = lora_grads(model)
    model.zero_grad()
    _, mean = plain_logps(model, batch)
    chosen, rejected = mean[:4], mean[4:]
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    expected = (-chosen - 0.2 * torch.log(torch.sigmoid(log_odds))).sum()
    expected.backward()
    # the formula itself to fp32 rounding; the whole loss to 1e-5: near log p = 0 the odds amplify the rounding
    # differences of a padded batch against one unpadded row at a time
    assert math.isclose(float(orpo_losses(chosen, rejected, 0.2).sum()), float(expected), rel_tol=1e-6)
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5)
    assert abs(figures["rewards/margin"] - float(0.2 * (chosen - rejected).sum())) < 1e-5
    assert_same_gradient(ours, lora_grads(model))


def test_a_long_pair_keeps_the_end_of_its_prompt_and_the_start_of_its_replies(make_cfg):
    cfg = make_cfg(["model=tiny"])
    tokenizer = build(cfg.model, cache_dir=cfg.paths.cache_dir).tokenizer  # bytes: one token per character
    prompt = [{"role": "user", "content": "alpha " * 200 + "omega"}, {"role": "assistant", "content": "earlier"},
              {"role": "user", "content": "last question"}]
    for chosen, limit, kept_reply in (("good answer", 128, "good answer"), ("good answer " * 30, 128, "good answer")):
        pair = PreferencePair(prompt, {"role": "assistant", "content": chosen}, {"role": "assistant", "content": "bad"})
        example = tokenize_pair(tokenizer, pair, limit)
        for side, reply in (("chosen", kept_reply), ("rejected", "bad")):
            ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
            assert len(ids) <= limit and len(ids) == len(labels)
            first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
            text = tokenizer.decode(ids[:first])
            assert text.endswith("last question<|im_end|>\n<|im_start|>assistant\n") and "alpha omega" not in text[:20]
            assert first >= limit // 2  # the prompt keeps at least half the length
            assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]).startswith(reply)  # only the last reply
        assert example["chosen_input_ids"][:first] == example["rejected_input_ids"][:first]  # one prompt for both
    assert "earlier" in tokenizer.decode(tokenize_pair(tokenizer, pair, 256)["rejected_input_ids"])
    assert tokenize_pair(tokenizer, pair, 2)["chosen_labels"][1:] == tokenizer.encode("g")  # a prompt token, a reply token
    assert tokenize_pair(tokenizer, pair, 1) is None  # no reply token after a prompt token: the pair is dropped


def test_preference_data_and_objectives_are_matched_or_refused_in_one_paragraph(make_cfg, tmp_path):
    realdata("preference", "dpo_en_demo.json")
    with pytest.raises(DataError, match=r"holds preference data .*train with a preference objective: objective=dpo"):
        read_splits(make_cfg(["model=tiny", *DEMO]))
    with pytest.raises(DataError, match=r"kubernetes/train.jsonl holds conversations \(data_format=messages\), and a "
                                        r"preference objective .* or train these conversations with objective=sft"):
        read_splits(make_cfg(["model=tiny", "objective=dpo"]))
    with pytest.raises(DataError, match=r"holds conversations \(data_format=messages\)"):  # named, not detected
        read_splits(make_cfg(["model=tiny", "objective=orpo", "data_format=messages"]))
    sft_on_pairs = read_splits(make_cfg(["model=tiny", *DEMO, "data_format=preference"]))  # chosen side, explicit
    assert "rejected" in sft_on_pairs.train[0] and sft_on_pairs.report["files"][0]["read"] == 300
    with pytest.raises(ConfigError, match="data.packing=true packs records"):
        run(make_cfg([*TINY_NO_EVAL, *DEMO, "objective=dpo", "data.packing=true"]), tmp_path / "packed")
    with pytest.raises(ConfigError, match="Leave data.train_on_prompt=false"):
        run(make_cfg([*TINY_NO_EVAL, *DEMO, "objective=dpo", "data.train_on_prompt=true"]), tmp_path / "prompt")
    for bad, message in (({"beta": 0}, "objective.beta=0 must be above 0"),
                         ({"loss_type": "hinge"}, "objective.loss_type=hinge is not one of sigmoid, ipo"),
                         ({"label_smoothing": 0.5}, r"must be in \[0, 0.5\)")):
        with pytest.raises(ConfigError, match=message):
            DPO(**bad)


def test_llmft_prepare_writes_pairs_that_a_dpo_run_reads_back(tmp_path, make_cfg):
    from llmft.data.prepare import prepare

    path = realdata("preference", "dpo_en_demo.json")
    report = prepare([str(path)], str(tmp_path / "out"))
    total = report["total"]
    assert total["read"] == 300 and total["read"] == total["written"] + total["rejected"] + total["duplicates"]
    assert report["files"][0]["format"] == "preference (detected)" or report["files"][0]["format"] == "preference"
    line = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert list(line) == ["id", "messages", "rejected", "meta"] and line["rejected"]["role"] == "assistant"
    splits = read_splits(make_cfg(["model=tiny", "objective=dpo", f"data.path={tmp_path / 'out'}"]))
    assert (len(splits.train), len(splits.val)) == (report["splits"]["train"], report["splits"]["val"])
    with pytest.raises(DataError, match="one output cannot mix them"):
        prepare([str(path), "llmft/sample_data/kubernetes/train.jsonl"], str(tmp_path / "mixed"))


def test_a_dpo_run_raises_preference_accuracy_on_its_training_pairs(make_cfg, tmp_path):
    from llmft.loop import Hardware
    from llmft.recording import RunRecorder

    realdata("preference", "dpo_en_demo.json")
    cfg = make_cfg([*TINY_NO_EVAL, *DEMO, "objective=dpo", "data.max_seq_length=256"])
    loaded = build(cfg.model, cache_dir=cfg.paths.cache_dir)
    model = apply_lora(loaded.model, build(cfg.lora), gradient_checkpointing=False)
    objective = build(cfg.objective)
    pairs, _ = tokenize_split(cfg, loaded.tokenizer, read_splits(cfg).train[:16], "train", objective)
    data, evaluator = EvalData(records=[], tokenized=None, pairs=pairs), PreferenceAccuracy()
    with model.disable_adapter():
        before = evaluator(model, loaded.tokenizer, data)["metrics"]
    build(cfg.trainer, max_steps=12).fit(
        model, pairs, objective.collate(loaded.tokenizer.pad_token_id, False),
        batch_plan=lambda epoch: [list(range(i, i + 4)) for i in range(0, 16, 4)], hardware=Hardware(),
        optimizer=build(cfg.hardware.optimizer), recorder=RunRecorder(tmp_path), objective=objective)
    after = evaluator(model, loaded.tokenizer, data)["metrics"]
    assert before["reward_margin"] == 0.0 and after["reward_margin"] > 1.0
    assert after["preference_accuracy"] >= 0.75 > before["preference_accuracy"]
    assert after["logp_accuracy"] > before["logp_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rewards/margin"] == 0.0 and rows[-1]["rewards/margin"] > 0 and rows[-1]["rewards/accuracy"] > 0.5


def test_qlora_dpo_runs_and_reports_preference_figures(make_cfg, tmp_path, caplog):
    realdata("preference", "dpo_en_demo.json")
    cfg = make_cfg([*TINY_NO_EVAL, *DEMO, "objective=dpo", "quantization=nf4", "data.max_seq_length=256",
                    "eval=preference"])
    with caplog.at_level(logging.INFO):
        summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    said = [record.getMessage() for record in caplog.records]
    assert said.count("Building llmft.objectives.DPO") == 1  # each thing is built, and said, once
    assert [m.split(":")[0] for m in said if m.startswith("Tokenized")] == ["Tokenized train", "Tokenized val",
                                                                          "Tokenized val pairs"]
    assert any(m.startswith("Done in") and "val pairs: preference accuracy" in m for m in said)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-6 and all(r["grad_norm"] > 0 for r in rows)
    assert rows[-1]["rewards/margin"] != 0.0  # the 4-bit policy moved away from its 4-bit reference
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert set(report["metrics"]["finetuned"]) == {"preference_accuracy", "reward_margin", "logp_accuracy",
                                                   "chosen_logp", "rejected_logp"}
    assert report["metrics"]["base"]["reward_margin"] == 0.0
    assert summary["preference"]["finetuned"]["reward_margin"] == report["metrics"]["finetuned"]["reward_margin"]
    assert "| preference_accuracy |" in (tmp_path / "samples.md").read_text()  # a table without perplexity too


@pytest.mark.slow
def test_sweeps_over_the_objective_and_its_beta(tmp_path, cache_dir):
    from tests.test_sweeps import sweep

    path = realdata("preference", "dpo_en_demo.json")
    common = [f"data.path={path}", "data_format=preference", "data.max_seq_length=256"]
    rows = sweep(tmp_path / "objectives", *common, "objective=sft,dpo", cache_dir=cache_dir)
    assert [r["status"] for r in rows] == ["completed"] * 2
    reports = [json.loads((tmp_path / "objectives" / str(n) / "eval_report.json").read_text()) for n in (0, 1)]
    assert all("preference_accuracy" in r["metrics"]["finetuned"] for r in reports)  # SFT on pairs is scored too
    table = (tmp_path / "objectives" / "sweep_summary.md").read_text()
    assert "| preference_accuracy | reward_margin |" in table.splitlines()[0]
    assert (tmp_path / "objectives" / "sweep_objective.png").is_file()
    rows = sweep(tmp_path / "betas", *common, "objective=dpo", "objective.beta=0.1,0.5", cache_dir=cache_dir)
    assert [r["status"] for r in rows] == ["completed"] * 2
    margins = [json.loads((tmp_path / "betas" / str(n) / "metrics.jsonl").read_text().splitlines()[-1])
               ["rewards/margin"] for n in (0, 1)]
    assert margins[0] != margins[1]  # beta reached the objective


@pytest.mark.parametrize("option", ["dpo", "orpo", "sft"])
def test_the_planner_knows_which_objectives_read_pairs_and_which_run_a_reference_pass(tiny, make_cfg, option):
    from llmft.planning.setup import PAIRWISE

    model, _, batch = tiny
    node = make_cfg([f"objective={option}"]).objective
    objective = build(node)
    assert objective.pairs == (node._target_ in PAIRWISE)
    forwards = []
    hook = model.get_base_model().register_forward_hook(lambda *_: forwards.append(1))
    with torch.no_grad():
        objective.loss_and_figures(model, batch) if objective.pairs else objective.loss_sum(model, batch)
    hook.remove()
    assert (len(forwards) == 2) == PAIRWISE.get(node._target_, False)  # the reference's forward, then the policy's
