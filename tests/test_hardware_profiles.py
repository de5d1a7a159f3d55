"""The hardware profiles extend one base profile (issue 14): each states only what differs from it."""

import pytest
from omegaconf import OmegaConf

from llmft.config import schema  # noqa: F401  (registers train_schema)
from llmft.config.location import CONFIG_DIR

PROFILES = sorted(p.stem for p in (CONFIG_DIR / "hardware").glob("*.yaml"))
BASE = OmegaConf.load(CONFIG_DIR / "hardware_base.yaml")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_extends_the_base_and_repeats_none_of_it(make_cfg, profile):
    own = OmegaConf.load(CONFIG_DIR / "hardware" / f"{profile}.yaml")
    assert list(own.defaults) == ["/hardware_base@_here_", "_self_"]
    repeated = [k for k in BASE if k in own and k != "optimizer" and own[k] == BASE[k]]
    repeated += [f"optimizer.{k}" for k in BASE.optimizer if k in own.get("optimizer", {})
                 and own.optimizer[k] == BASE.optimizer[k]]
    assert repeated == []
    composed = make_cfg([f"hardware={profile}"]).hardware
    for key in BASE:  # what the profile leaves out comes from the base
        assert composed[key] == own.get(key, BASE[key]) if key != "optimizer" else composed.optimizer._partial_


def test_the_base_is_not_an_option_of_the_group():
    assert "profile" not in PROFILES and "base" not in PROFILES
