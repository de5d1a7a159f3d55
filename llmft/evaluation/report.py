"""``eval_report.json``: the fine-tuned model's figures, the base model's, their difference, and the answers."""

import logging
from typing import Any, Dict

log = logging.getLogger(__name__)
FIGURES = ("eval_loss", "perplexity", "num_samples", "total_tokens")


def run_evaluators(evaluators: Dict[str, Any], model, tokenizer, dataset, label: str) -> Dict[str, dict]:
    """Run every evaluator on ``model``; ``label`` (``base``/``fine-tuned``) only names it in the log."""
    results = {}
    for name, evaluator in evaluators.items():
        log.info("Evaluating %s model: %s", label, name)
        results[name] = evaluator(model, tokenizer, dataset)
    return results


def build_eval_report(base: Dict[str, dict], tuned: Dict[str, dict]) -> dict:
    """Merge the base and fine-tuned results into the report's fields.

    Top level: the fine-tuned model's ``eval_loss``, ``perplexity``, ``num_samples``, ``total_tokens``;
    ``base``: the same for the base model; ``delta``: fine-tuned minus base; ``prompt_results``: each prompt
    with both answers and the reference.
    """
    flat = lambda results: {k: v for r in results.values() for k, v in r.items() if k in FIGURES}  # noqa: E731
    report: Dict[str, Any] = {**flat(tuned), "base": flat(base)}
    report["delta"] = {k: report[k] - report["base"][k] for k in ("eval_loss", "perplexity") if k in report}
    base_answers = [a for r in base.values() for a in r.get("answers", [])]
    tuned_answers = [a for r in tuned.values() for a in r.get("answers", [])]
    report["prompt_results"] = [{"prompt": b["prompt"], "base": b["answer"], "finetuned": t["answer"],
                                 "reference": b["reference"]} for b, t in zip(base_answers, tuned_answers)]
    return report
