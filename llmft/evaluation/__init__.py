"""Evaluation: each ``eval`` option names evaluators; each runs on the base model and on the fine-tuned one.

The names below load on first use (as ``llmft.data``'s do), so that ``llmft-chat``, which needs only
``llmft.evaluation.generation``, does not import the evaluators' libraries (``evaluate``, ``datasets``).
"""

from llmft.lazy import lazy_names

_EXPORTS = {
    "EvalData": "llmft.evaluation.data", "ReferenceMetrics": "llmft.evaluation.metrics",
    "Perplexity": "llmft.evaluation.perplexity", "PreferenceAccuracy": "llmft.evaluation.preference",
    "PromptAnswers": "llmft.evaluation.prompts", "build_eval_report": "llmft.evaluation.report",
    "preference_figures": "llmft.evaluation.report",
    "run_evaluators": "llmft.evaluation.report", "samples_markdown": "llmft.evaluation.report",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_names(__name__, _EXPORTS)
