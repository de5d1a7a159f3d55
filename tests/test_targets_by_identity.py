"""The tiny model, the perplexity evaluator and the FSDP plugin are recognised by what their target resolves to
where torch is imported anyway (the tokenizer loader, llmft.distributed), and by import paths in the planner, which
imports no torch: these tests check that every path the planner knows resolves to the same object, so the two cannot
drift."""

from accelerate.utils import FullyShardedDataParallelPlugin
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from llmft.config.location import CONFIG_DIR

from llmft.evaluation import Perplexity, PreferenceAccuracy
from llmft.models.tiny import build_tiny, is_tiny
from llmft.planning.arch import TINY_TARGETS
from llmft.planning.setup import FSDP_TARGET, PERPLEXITY_TARGETS, PREFERENCE_TARGETS, _eval_settings


def test_the_tiny_model_is_recognised_under_either_import_path():
    assert is_tiny({"_target_": "llmft.models.build_tiny"}) and is_tiny({"_target_": "llmft.models.tiny.build_tiny"})
    assert not is_tiny({"_target_": "llmft.models.load_pretrained"})


def test_the_planners_import_paths_resolve_to_the_builders():
    assert TINY_TARGETS and all(get_method(target) is build_tiny for target in TINY_TARGETS)
    assert PERPLEXITY_TARGETS and all(get_class(target) is Perplexity for target in PERPLEXITY_TARGETS)
    assert PREFERENCE_TARGETS and all(get_class(target) is PreferenceAccuracy for target in PREFERENCE_TARGETS)
    assert get_class(FSDP_TARGET) is FullyShardedDataParallelPlugin  # what llmft.distributed checks by isinstance
    assert OmegaConf.load(CONFIG_DIR / "distributed" / "fsdp.yaml")._target_ == FSDP_TARGET


def test_the_preference_evaluators_pairs_are_planned_as_two_rows_when_training_on_pairs():
    evaluators = {"perplexity": {"_target_": PERPLEXITY_TARGETS[0], "batch_size": 8},
                  "preference": {"_target_": PREFERENCE_TARGETS[1], "batch_size": 8}}
    dpo = _eval_settings({"eval": evaluators, "objective": {"_target_": "llmft.objectives.DPO"}})
    assert (dpo["eval_batch_size"], dpo["eval_batch_key"]) == (16, "eval.preference.batch_size")
    sft = _eval_settings({"eval": evaluators, "objective": {"_target_": "llmft.objectives.SFT"}})
    assert (sft["eval_batch_size"], sft["eval_batch_key"]) == (8, "eval.perplexity.batch_size")


def test_the_planner_finds_the_perplexity_evaluator_under_either_path():
    for target in PERPLEXITY_TARGETS:
        found = _eval_settings({"eval": {"ppl": {"_target_": target, "batch_size": 3},
                                         "prompts": {"_target_": "llmft.evaluation.PromptAnswers", "batch_size": 9}}})
        assert (found["eval_batch_size"], found["eval_batch_key"]) == (3, "eval.ppl.batch_size")
