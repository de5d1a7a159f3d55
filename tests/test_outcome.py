"""Numbers that tell the truth: mean answer scores beside perplexity, what max_seq_length cut, the plan's case."""

import logging

from datasets import Dataset

from llmft.evaluation.report import answer_means, build_eval_report, samples_markdown
from llmft.outcome import log_answers, log_outcome, printable
from llmft.planning.preflight import plan_run, records_cut
from llmft.sweeps.table import COLUMNS
from tests.conftest import TINY_NO_EVAL


def _answers(scores):
    return {"prompts": {"answers": [{"prompt": f"p{i}", "answer": "a", "reference": "r", "scores": {"chrf": s}}
                                    for i, s in enumerate(scores)]}}


def test_the_report_gives_the_mean_of_each_answer_score_base_and_fine_tuned():
    base = {"perplexity": {"eval_loss": 4.0, "perplexity": 54.6}, **_answers([24.0, 20.0, 30.0, 10.0, 16.0])}
    tuned = {"perplexity": {"eval_loss": 3.9, "perplexity": 49.4}, **_answers([13.0, 19.0, 30.0, 12.0, 11.0])}
    report = build_eval_report(base, tuned)
    assert report["answer_means"] == {"prompts": 5, "base": {"chrf": 20.0}, "finetuned": {"chrf": 17.0},
                                      "no_worse": {"chrf": 2}}
    assert "| chrf, mean over 5 prompts (no worse on 2) | 20.0000 | 17.0000 | -3.0000 |" in \
        samples_markdown(report, "t")
    assert answer_means([{"prompt": "p", "base": "a", "finetuned": "b", "reference": None}]) == {}
    prompts_only = samples_markdown(build_eval_report(_answers([1.0]), _answers([2.0])), "t")  # eval=prompts
    assert "| chrf, mean over 1 prompts (no worse on 1) | 1.0000 | 2.0000 | +1.0000 |" in prompts_only


def test_the_end_of_run_line_puts_the_answer_means_and_the_plan_beside_perplexity(caplog):
    summary = {"status": "completed", "duration_s": 30.0, "perplexity": 51.35, "base_perplexity": 71.78,
               "answer_means": {"prompts": 5, "base": {"chrf": 23.96}, "finetuned": {"chrf": 13.01},
                                "no_worse": {"chrf": 0}},
               "truncated_records": 2, "dropped_records": 1, "train_records": 55, "mean_train_loss_last_epoch": 3.7,
               "tokens_per_s": 176.0, "peak_memory_mb": 3636.0, "memory_plan": {"total_mb": 10957.0},
               "predicted_peak_mb": 3900.0, "output_dir": "/x"}
    with caplog.at_level(logging.INFO, logger="llmft.outcome"):
        log_outcome(summary)
    line = caplog.records[-1].getMessage()
    assert "val perplexity 71.78 -> 51.35" in line and "answers, mean over 5 prompts: chrf 23.96 -> 13.01 (no " \
        "worse on 0 of 5)" in line
    assert "cut 2 and dropped 1 of 56 training records" in line and "mean train loss of the last epoch 3.7000" in line
    assert "peak memory 3636 MB (planned 10957 MB in the worst case, 3900 MB at the longest record)" in line


def test_a_run_on_pairs_ends_with_its_preference_figures_and_its_sweep_table_shows_them(tmp_path, caplog):
    from llmft.evaluation.report import preference_figures
    from llmft.sweeps.table import write_comparison

    figures = lambda accuracy, margin: {"preference": {  # noqa: E731
        "metrics": {"preference_accuracy": accuracy, "reward_margin": margin, "chosen_logp": -246.3}}}
    report = build_eval_report(figures(0.4, 0.0), figures(0.6, 2.0))
    assert preference_figures(report) == {"base": {"preference_accuracy": 0.4, "reward_margin": 0.0},
                                          "finetuned": {"preference_accuracy": 0.6, "reward_margin": 2.0}}
    assert preference_figures(build_eval_report(_answers([1.0]), _answers([2.0]))) == {}  # conversations
    summary = {"status": "completed", "duration_s": 30.0, "perplexity": 40.0, "base_perplexity": 41.0,
               "preference": preference_figures(report), "mean_train_loss_last_epoch": 0.6, "tokens_per_s": 376.0,
               "peak_memory_mb": 4009.0, "output_dir": "/x"}
    with caplog.at_level(logging.INFO, logger="llmft.outcome"):
        log_outcome(summary)
    assert "val pairs: preference accuracy 0.400 -> 0.600, reward margin 0.00 -> 2.00 nats" in \
        caplog.records[-1].getMessage()

    def row(job, **figures):
        return {**{c: None for c in COLUMNS}, "job": job, "overrides": job, "status": "completed",
                "params": {"objective": job}, **figures}
    write_comparison([row("sft", eval_loss=1.0), row("dpo", eval_loss=1.1, preference_accuracy=0.6,
                                                     reward_margin=2.0)], tmp_path)
    header, _, sft, dpo = (tmp_path / "sweep_summary.md").read_text().splitlines()
    assert "| perplexity | preference_accuracy | reward_margin | tokens_per_s |" in header
    assert "| 0.6 | 2 |" in dpo and "|  |  |" in sft
    write_comparison([row("sft", eval_loss=1.0)], tmp_path / "conversations")
    assert "preference" not in (tmp_path / "conversations" / "sweep_summary.md").read_text()


def test_a_summary_json_of_another_shape_is_a_damaged_row_not_a_crash(tmp_path):
    from llmft.sweeps.table import collect_runs

    for name, text in (("odd_preference", '{"status": "completed", "preference": "oops", "perplexity": 3.0}'),
                       ("a_list", "[1, 2]"), ("broken", '{"status": '), ("none", None)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("[]")
        if text is not None:
            (tmp_path / name / "summary.json").write_text(text)
    none, listed, broken, odd = collect_runs([str(tmp_path)])  # shorter names first
    assert odd["status"] == "completed" and odd["perplexity"] == 3.0 and "preference_accuracy" not in odd
    assert listed["status"] == "failed" and "not a JSON object" in listed["reason"]
    assert broken["status"] == "failed" and "not valid JSON" in broken["reason"]
    assert none["status"] == "failed" and "no summary.json" in none["reason"]


def test_records_cut_counts_records_with_an_example_at_the_limit():
    tokenized = Dataset.from_list([{"record": 0, "input_ids": [1] * 8}, {"record": 1, "input_ids": [1] * 3},
                                   {"record": 2, "input_ids": [1] * 8}, {"record": 2, "input_ids": [1] * 2}])
    assert records_cut(tokenized, 8) == 2 and records_cut(tokenized, 9) == 0


def test_random_model_answers_are_marked_as_noise_and_control_characters_escaped(caplog):
    assert printable("a\x1b[2Jb\x07\nc\u200b") == "a\\x1b[2Jb\\x07\nc\\u200b"
    report = {"prompt_results": [{"prompt": "p", "base": "\x1b[31mred", "finetuned": "ok"}]}
    with caplog.at_level(logging.INFO, logger="llmft.outcome"):
        log_answers(report, random_weights=True)
    text = caplog.text
    assert "random weights" in text and "noise" in text and "\x1b" not in text and "\\x1b[31mred" in text


def test_the_plan_line_says_it_is_the_worst_case(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="llmft.planning.preflight"):
        plan_run(make_cfg(TINY_NO_EVAL))
    assert "Memory plan for the worst case, every sequence padded to data.max_seq_length=384" in caplog.text


def test_the_sweep_table_shows_what_max_seq_length_cut():
    assert {"truncated_records", "dropped_records"} <= set(COLUMNS)


def test_the_sweep_table_writes_large_figures_in_digits_not_exponents(tmp_path):
    from llmft.sweeps.table import write_comparison

    row = {c: None for c in COLUMNS}
    row.update(job="j", overrides="objective.beta=0.05", status="completed", tokens_per_s=11192.34, eval_loss=5.5614,
               peak_memory_mb=730.31, params={"objective.beta": "0.05"})
    write_comparison([row], tmp_path)
    line = (tmp_path / "sweep_summary.md").read_text().splitlines()[2]
    assert "| 11192 |" in line and "e+" not in line
    assert "| 5.561 |" in line and "| 730.3 |" in line


def test_llmft_eval_says_the_answer_means_beside_perplexity_as_the_end_of_a_run_does(tmp_path, caplog):
    from llmft.reevaluate import log_report

    base = {"perplexity": {"eval_loss": 4.0, "perplexity": 54.6}, **_answers([20.0, 30.0])}
    tuned = {"perplexity": {"eval_loss": 3.0, "perplexity": 20.1}, **_answers([25.0, 10.0])}
    report = build_eval_report(base, tuned)
    with caplog.at_level(logging.INFO):
        log_report(report, tmp_path / "eval_report-20261201-000312.json")
    assert "val perplexity 54.60 -> 20.10 (base -> fine-tuned); answers, mean over 2 prompts: chrf 25 -> 17.5 " \
           "(no worse on 1 of 2)" in caplog.text
    assert "samples-20261201-000312.md" in caplog.text
    one = build_eval_report({**base, **_answers([20.0])}, {**tuned, **_answers([25.0])})
    with caplog.at_level(logging.INFO):
        log_report(one, tmp_path / "eval_report-1.json")
    assert "answers, mean over 1 prompt: chrf 20 -> 25 (no worse on 1 of 1)" in caplog.text
