"""The tiny model and the perplexity evaluator are recognised by what their target resolves to where torch is
imported anyway (the tokenizer loader), and by import paths in the planner, which imports no torch: these tests
check that every path the planner knows resolves to the same builder, so the two cannot drift."""

from hydra.utils import get_class, get_method

from llmft.evaluation import Perplexity
from llmft.models.tiny import build_tiny, is_tiny
from llmft.planning.arch import TINY_TARGETS
from llmft.planning.setup import PERPLEXITY_TARGETS, _eval_settings


def test_the_tiny_model_is_recognised_under_either_import_path():
    assert is_tiny({"_target_": "llmft.models.build_tiny"}) and is_tiny({"_target_": "llmft.models.tiny.build_tiny"})
    assert not is_tiny({"_target_": "llmft.models.load_pretrained"})


def test_the_planners_import_paths_resolve_to_the_builders():
    assert TINY_TARGETS and all(get_method(target) is build_tiny for target in TINY_TARGETS)
    assert PERPLEXITY_TARGETS and all(get_class(target) is Perplexity for target in PERPLEXITY_TARGETS)


def test_the_planner_finds_the_perplexity_evaluator_under_either_path():
    for target in PERPLEXITY_TARGETS:
        found = _eval_settings({"eval": {"ppl": {"_target_": target, "batch_size": 3},
                                         "prompts": {"_target_": "llmft.evaluation.PromptAnswers", "batch_size": 9}}})
        assert (found["eval_batch_size"], found["eval_batch_key"]) == (3, "eval.ppl.batch_size")
