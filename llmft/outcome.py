"""What a run says at its end: the answers side by side, then one line of figures that do not mislead."""

import logging
from typing import Any, Dict, List, Mapping

log = logging.getLogger(__name__)


def printable(text: str) -> str:
    """``text`` with control characters (other than newlines) escaped, so a terminal shows them, not obeys them."""
    return "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii") for c in text)


def log_answers(report: Mapping[str, Any], random_weights: bool = False) -> None:
    """Log each held-aside prompt with the base and the fine-tuned answer."""
    rows = report.get("prompt_results", [])
    if rows and random_weights:
        log.info("The answers below come from a model with random weights (model=tiny): noise, shown only to check "
                 "that generation runs; a pretrained model (model=smollm2-135m) gives real ones.")
    for item in rows:
        log.info("Prompt: %s\n  base:       %s\n  fine-tuned: %s", printable(item["prompt"]),
                 printable(item["base"]), printable(item["finetuned"]))


def log_outcome(summary: Dict[str, Any]) -> None:
    """One line: perplexity and mean answer scores, base -> fine-tuned; train loss, speed, memory against plan."""
    if summary["status"] != "completed":
        log.error("Run %s after %.0f s: %s. Run folder: %s", summary["status"], summary["duration_s"],
                  str(summary.get("error")).rstrip("."), summary["output_dir"])
        return
    parts = evaluation_parts(summary.get("base_perplexity"), summary.get("perplexity"), summary.get("answer_means"),
                             summary.get("preference"))
    cut, dropped = summary.get("truncated_records"), summary.get("dropped_records")
    if cut or dropped:
        parts.append(f"data.max_seq_length cut {cut or 0} and dropped {dropped or 0} of "
                     f"{summary['train_records'] + (dropped or 0)} training records")
    parts.append(f"mean train loss of the last epoch {summary['mean_train_loss_last_epoch']:.4f}, "
                 f"{summary['tokens_per_s']:.0f} tok/s, "
                 f"peak memory {summary['peak_memory_mb']:.0f} MB{_plan_beside(summary)}")
    log.info("Done in %.0f s: %s. Run folder: %s", summary["duration_s"], "; ".join(parts), summary["output_dir"])


def evaluation_parts(base_perplexity, perplexity, means, preference=None) -> List[str]:
    """The evaluation's figures, base -> fine-tuned: perplexity, the preference figures on the validation pairs
    (``preference_figures``), and each answer score's mean over the prompts with a reference (``answer_means`` of
    the report); the end of a run and ``llmft-eval`` both say them so."""
    parts = []
    if perplexity is not None and base_perplexity is not None:
        parts.append(f"val perplexity {base_perplexity:.2f} -> {perplexity:.2f} (base -> fine-tuned)")
    if preference:
        base, tuned = preference["base"], preference["finetuned"]
        parts.append(f"val pairs: preference accuracy {base['preference_accuracy']:.3f} -> "
                     f"{tuned['preference_accuracy']:.3f}, reward margin {base['reward_margin']:.2f} -> "
                     f"{tuned['reward_margin']:.2f} nats")
    if means:
        n = means["prompts"]
        parts.append(f"answers, mean over {n} prompt{'' if n == 1 else 's'}: " + ", ".join(
            f"{k} {means['base'][k]:.4g} -> {v:.4g} (no worse on {means['no_worse'][k]} of {n})"
            for k, v in means["finetuned"].items()))
    return parts


def _plan_beside(summary: Mapping[str, Any]) -> str:
    plan = summary.get("memory_plan")
    if not plan:
        return ""
    at_longest = summary.get("predicted_peak_mb")
    return (f" (planned {plan['total_mb']:.0f} MB in the worst case"
            + (f", {at_longest:.0f} MB at the longest record" if at_longest is not None else "") + ")")
