"""Evaluation: each ``eval`` option names evaluators; each runs on the base model and on the fine-tuned one."""

from llmft.evaluation.perplexity import Perplexity
from llmft.evaluation.prompts import PromptAnswers
from llmft.evaluation.report import build_eval_report, run_evaluators

__all__ = ["Perplexity", "PromptAnswers", "build_eval_report", "run_evaluators"]
