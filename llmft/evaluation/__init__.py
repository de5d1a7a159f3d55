"""Evaluation: each ``eval`` option names evaluators; each runs on the base model and on the fine-tuned one."""

from llmft.evaluation.data import EvalData
from llmft.evaluation.metrics import ReferenceMetrics
from llmft.evaluation.perplexity import Perplexity
from llmft.evaluation.preference import PreferenceAccuracy
from llmft.evaluation.prompts import PromptAnswers
from llmft.evaluation.report import build_eval_report, run_evaluators, samples_markdown

__all__ = ["EvalData", "Perplexity", "PreferenceAccuracy", "PromptAnswers", "ReferenceMetrics", "build_eval_report", "run_evaluators",
           "samples_markdown"]
