"""Every option of every group, and every experiment, composes, resolves and binds to its targets: no weights."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.config.validate import validate
from llmft.errors import ConfigError

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def test_the_groups_the_design_promises_exist():
    assert {"model", "quantization", "lora", "data_format", "hardware", "eval", "trainer", "experiment"} <= set(GROUPS)
    assert {"smollm2-135m", "tinyllama-1.1b", "qwen2.5-0.5b", "phi-2", "llama-3.2-1b", "tiny"} <= \
        {o for g, o in OPTIONS if g == "model"}
    assert {"cpu", "gtx1660-6gb", "rtx4090-24gb", "a100-80gb", "h100-80gb"} <= {o for g, o in OPTIONS if g == "hardware"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_resolves_and_binds(make_cfg, group, option):
    cfg = make_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)
    validate(cfg)  # imports every _target_, checks its prefix and binds its keys to its signature


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_yaml_explains_itself_in_its_first_lines(path: Path):
    head = [line for line in path.read_text().splitlines()[:4] if line.startswith("#")]
    text = " ".join(head)
    assert head and "llmft-train" in text, f"{path} should open with what it is and the command that uses it"


def test_a_target_off_the_allow_list_is_refused(make_cfg):
    cfg = make_cfg(["model=tiny"])
    cfg.trainer._target_ = "torch.load"  # torch.optim.AdamW is allowed; its package is not
    with pytest.raises(ConfigError, match="trainer._target_=torch.load is not allowed"):
        validate(cfg)


def test_a_target_that_does_not_import_is_one_line_and_said_once(make_cfg, monkeypatch, caplog):
    from llmft.quiet import quiet_libraries

    monkeypatch.setenv("LLMFT_ALLOW_TARGETS", "my_pkg.MyLoop")  # the README's example of one's own callable
    quiet_libraries()
    cfg = make_cfg(["model=tiny"])
    cfg.trainer._target_ = "my_pkg.MyLoop"
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert str(error.value).startswith("trainer._target_=my_pkg.MyLoop cannot be imported (ModuleNotFoundError: No "
                                       "module named 'my_pkg'). Check the spelling")
    assert "\n" not in str(error.value)
    assert "Error getting object" not in caplog.text  # Hydra's three-line copy of the same, filtered


def test_a_key_the_target_does_not_take_is_named(make_cfg):
    cfg = make_cfg(["model=tiny", "+model.hiden_size=3"])
    with pytest.raises(ConfigError, match="model.hiden_size is not an argument of llmft.models.build_tiny"):
        validate(cfg)


def test_quantization_takes_its_compute_dtype_from_the_hardware_profile(make_cfg):
    cfg = make_cfg(["quantization=nf4", "hardware=rtx4090-24gb"])
    assert cfg.quantization.bnb_4bit_compute_dtype == "bfloat16"
    assert make_cfg(["quantization=nf4", "hardware=gtx1660-6gb"]).quantization.bnb_4bit_compute_dtype == "float16"


def test_none_options_set_their_node_to_null(make_cfg):
    assert make_cfg(["quantization=none"]).quantization is None
    assert make_cfg(["eval=none"]).eval is None


def test_lora_variants_extend_the_default(make_cfg):
    assert make_cfg(["lora=dora"]).lora.use_dora is True
    assert make_cfg(["lora=rslora"]).lora.use_rslora is True
    all_linear = make_cfg(["lora=all-linear"]).lora
    assert all_linear.target_modules == "all-linear" and all_linear.r == 16
