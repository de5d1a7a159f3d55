"""Quantization has one identity (issue 14): the scheme name the planner reads is the one training builds."""

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from llmft.config import schema  # noqa: F401  (registers train_schema)
from llmft.config.location import CONFIG_DIR
from llmft.planning import setup_from_cfg
from llmft.quantization import FOUR_BIT, INT8, scheme

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "quantization").glob("*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_the_planner_and_training_name_every_option_alike(make_cfg, option):
    cfg = make_cfg([f"quantization={option}"])
    built = instantiate(cfg.quantization) if cfg.quantization is not None else None
    name, double = scheme(cfg.quantization)
    assert (name, double) == scheme(built)  # the BitsAndBytesConfig training loads with
    assert (setup_from_cfg(cfg).quantization, setup_from_cfg(cfg).double_quant) == (name, double)
    assert name in (*FOUR_BIT, INT8, None)
    assert (name is None) == (option == "none")
    if built is not None:
        assert built.quant_method == "bitsandbytes" and (name == INT8) == built.load_in_8bit


def test_a_4bit_config_without_a_type_is_bitsandbytes_default():
    assert scheme(OmegaConf.create({"load_in_4bit": True})) == ("fp4", False)
