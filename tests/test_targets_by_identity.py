"""No branching on ``_target_`` strings (issue 14): the tiny model and the perplexity evaluator are recognised by
what their target resolves to, under any import path."""

from pathlib import Path

from llmft.models.tiny import is_tiny
from llmft.planning.setup import _eval_settings

PACKAGE = Path(__file__).resolve().parents[1] / "llmft"


def test_the_tiny_model_is_recognised_under_either_import_path():
    assert is_tiny({"_target_": "llmft.models.build_tiny"}) and is_tiny({"_target_": "llmft.models.tiny.build_tiny"})
    assert not is_tiny({"_target_": "llmft.models.load_pretrained"})


def test_the_planner_finds_the_perplexity_evaluator_by_its_class():
    found = _eval_settings({"eval": {"ppl": {"_target_": "llmft.evaluation.perplexity.Perplexity", "batch_size": 3},
                                     "prompts": {"_target_": "llmft.evaluation.PromptAnswers", "batch_size": 9}}})
    assert (found["eval_batch_size"], found["eval_batch_key"]) == (3, "eval.ppl.batch_size")


def test_no_module_compares_a_target_string():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert '.endswith(".Perplexity")' not in text and "TINY_TARGET" not in text, path
