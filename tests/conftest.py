"""Shared fixtures: compose configs with Hydra's compose API; run the pipeline on the tiny model in a temp folder."""

import os
from pathlib import Path
from typing import List

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from llmft.config import schema  # noqa: F401  (registers train_schema, as llmft-train's entry point does)
from llmft.config.location import CONFIG_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"

# The tiny model, a handful of steps, short answers: an end-to-end run in a few seconds.
TINY = ["model=tiny", "data.max_samples=16", "data.max_seq_length=384", "trainer.max_steps=6",
        "trainer.learning_rate=3e-3", "eval.prompts.max_new_tokens=8", "hardware.micro_batch_size=4"]
TINY_NO_EVAL = [o for o in TINY if not o.startswith("eval.")] + ["eval=none"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One model cache for the whole session (tiny models are built once; the GGUF copy is reused)."""
    shared = os.environ.get("LLMFT_CACHE_DIR")
    return shared or str(tmp_path_factory.mktemp("llmft-cache"))


@pytest.fixture
def make_cfg(cache_dir):
    """Compose ``conf/train.yaml`` with overrides, as ``llmft-train`` would."""

    def _make(overrides: List[str] = (), config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=[f"paths.cache_dir={cache_dir}", *overrides])

    return _make


def realdata(*parts: str) -> Path:
    """A path under ../shared/realdata, or a skip when the folder is not there."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (a checkout without shared/realdata)")
    return path
