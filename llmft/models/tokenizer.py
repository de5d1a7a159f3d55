"""The tokenizer of a ``model`` option, found where the model's files would be, without loading any weights."""

from typing import Optional, Tuple

from omegaconf import DictConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmft.data.tokenizer import open_tokenizer
from llmft.errors import ModelLoadError
from llmft.model_cache import fallback_for
from llmft.models.gguf import locate_gguf
from llmft.models.hub import find_source
from llmft.models.tiny import BYTE_LEVEL_NAME, byte_level_tokenizer, is_tiny


def load_tokenizer(model: DictConfig, cache_dir: Optional[str] = None) -> Tuple[PreTrainedTokenizerBase, str]:
    """Load only the tokenizer that ``model`` (a ``conf/model`` option) would load with its weights.

    The option's ``tokenizer`` folder; else wherever the weights would come from (``llmft.models.hub.find_source``:
    a local folder, the Hugging Face cache, the hub, an earlier GGUF conversion); else the GGUF file itself (its
    metadata holds the tokenizer), with no conversion. The tiny model's byte-level tokenizer is built in-process.

    Args:
        model: the composed ``model`` node.
        cache_dir: ``paths.cache_dir``.

    Returns:
        The tokenizer, and where it came from.

    Raises:
        ModelLoadError: no tokenizer can be found offline or on the hub.
    """
    name, own = model.get("name_or_path"), model.get("tokenizer")
    remote = bool(model.get("trust_remote_code", False))  # the model's own code runs only when its config says so
    if own:
        return open_tokenizer(own, key="model.tokenizer", trust_remote_code=remote), own
    if is_tiny(model):
        return byte_level_tokenizer(), f"{BYTE_LEVEL_NAME} (built in-process)"
    if name is None:
        raise ModelLoadError(f"the model option ({model._target_}) names no name_or_path or tokenizer to load.")
    gguf = fallback_for(str(name), model.get("gguf"))  # only for the option's own model id
    source = find_source(str(name), model.get("revision"), gguf, cache_dir)  # where the weights would come from
    if source is not None:
        return open_tokenizer(source, revision=model.get("revision"), trust_remote_code=remote), source
    if gguf:
        path = locate_gguf(gguf["package"], gguf["file"])
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=remote), str(path)
    raise ModelLoadError(f"the tokenizer of {name} is not in a local folder or the Hugging Face cache, and the hub "
                         f"cannot be reached. Download it elsewhere (hf download {name} --local-dir "
                         "DIR), copy DIR here and pass model.name_or_path=DIR, or pick model=tiny.")
