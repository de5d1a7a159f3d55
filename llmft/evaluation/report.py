"""``eval_report.json`` and ``samples.md``: the fine-tuned model's figures, the base model's, and the answers."""

import logging
from typing import Any, Dict, List

log = logging.getLogger(__name__)
FIGURES = ("eval_loss", "perplexity", "num_samples", "total_tokens")
PREFERENCE = ("preference_accuracy", "reward_margin")  # the preference evaluator's figures a run ends with


def run_evaluators(evaluators: Dict[str, Any], model, tokenizer, data, label: str) -> Dict[str, dict]:
    """Run every evaluator on ``model``; ``label`` (``base``/``fine-tuned``) only names it in the log."""
    results = {}
    for name, evaluator in evaluators.items():
        log.info("Evaluating the %s model: %s", label, name)
        results[name] = evaluator(model, tokenizer, data)
    return results


def build_eval_report(base: Dict[str, dict], tuned: Dict[str, dict]) -> dict:
    """Merge the base and fine-tuned results into the report's fields.

    Top level: the fine-tuned model's ``eval_loss``, ``perplexity``, ``num_samples``, ``total_tokens``;
    ``base``: the same for the base model; ``delta``: fine-tuned minus base; ``metrics``: reference metrics of
    both; ``prompt_results``: each prompt with both answers, the reference and the scores of each answer;
    ``answer_means``: the mean of each answer score, base and fine-tuned (``answer_means``).
    """
    flat = lambda results: {k: v for r in results.values() for k, v in r.items() if k in FIGURES}  # noqa: E731
    metrics = lambda results: {k: v for r in results.values() for k, v in r.get("metrics", {}).items()}  # noqa: E731
    report: Dict[str, Any] = {**flat(tuned), "base": flat(base)}
    report["delta"] = {k: report[k] - report["base"][k] for k in ("eval_loss", "perplexity") if k in report}
    if metrics(tuned):
        report["metrics"] = {"base": metrics(base), "finetuned": metrics(tuned),
                             "delta": {k: v - metrics(base)[k] for k, v in metrics(tuned).items()}}
    report["prompt_results"] = _prompt_results(base, tuned)
    means = answer_means(report["prompt_results"])
    if means:
        report["answer_means"] = means
    return report


def answer_means(rows: List[dict]) -> dict:
    """The mean of each per-answer score over the prompts that have a reference, base and fine-tuned, and on how
    many prompts the fine-tuned answer scores at least as well as the base's ({} when no prompt has a reference).
    """
    scored = [row["scores"] for row in rows if row.get("scores")]
    if not scored:
        return {}
    names = list(scored[0]["finetuned"])
    mean = lambda side: {n: sum(s[side][n] for s in scored) / len(scored) for n in names}  # noqa: E731
    return {"prompts": len(scored), "base": mean("base"), "finetuned": mean("finetuned"),
            "no_worse": {n: sum(s["finetuned"][n] >= s["base"][n] for s in scored) for n in names}}


def preference_figures(report: Dict[str, Any]) -> dict:
    """The preference evaluator's headline figures (``PREFERENCE``), ``base`` and ``finetuned``, from a report's
    ``metrics``; {} when there were no preference pairs to evaluate."""
    metrics = report.get("metrics") or {}
    if not all(k in metrics.get("finetuned", {}) for k in PREFERENCE):
        return {}
    return {side: {k: metrics[side][k] for k in PREFERENCE} for side in ("base", "finetuned")}


def _prompt_results(base: Dict[str, dict], tuned: Dict[str, dict]) -> List[dict]:
    answers = lambda results: [a for r in results.values() for a in r.get("answers", [])]  # noqa: E731
    rows = []
    for b, t in zip(answers(base), answers(tuned)):
        row = {"prompt": b["prompt"], "base": b["answer"], "finetuned": t["answer"], "reference": b["reference"]}
        if "scores" in b:
            row["scores"] = {"base": b["scores"], "finetuned": t["scores"]}
        rows.append(row)
    return rows


def samples_markdown(report: dict, title: str) -> str:
    """A readable side-by-side of the base and fine-tuned answers, with the headline figures first."""
    lines = [f"# {title}", ""]
    rows = [(key, report["base"][key], report[key]) for key in ("eval_loss", "perplexity") if key in report]
    rows += [(key, report["metrics"]["base"][key], value)
             for key, value in report.get("metrics", {}).get("finetuned", {}).items()]
    means = report.get("answer_means", {})
    rows += [(f"{key}, mean over {means['prompts']} prompts (no worse on {means['no_worse'][key]})",
              means["base"][key], value) for key, value in means.get("finetuned", {}).items()]
    if rows:
        lines += ["| | base | fine-tuned | change |", "|---|---|---|---|"]
        lines += [f"| {key} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |" for key, base, tuned in rows]
        lines.append("")
    for i, row in enumerate(report.get("prompt_results", []), start=1):
        lines += [f"## {i}. {row['prompt']}", "", "**Base**", "", _quote(row["base"]), "", "**Fine-tuned**", "",
                  _quote(row["finetuned"]), ""]
        if row.get("reference"):
            lines += ["**Reference**", "", _quote(row["reference"]), ""]
        if row.get("scores"):
            scores = ", ".join(f"{k} {row['scores']['base'][k]:.2f} -> {v:.2f}"
                               for k, v in row["scores"]["finetuned"].items())
            lines += [f"Scores (base -> fine-tuned): {scores}", ""]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in (text or "(empty)").splitlines()) or "> (empty)"
