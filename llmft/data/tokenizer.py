"""The tokenizer of a ``model`` option, found where the model's files would be, without loading any weights."""

from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmft.errors import ModelLoadError

TINY_TARGETS = ("llmft.models.build_tiny", "llmft.models.tiny.build_tiny")


def load_tokenizer(model: DictConfig, cache_dir: Optional[str] = None) -> Tuple[PreTrainedTokenizerBase, str]:
    """Load only the tokenizer that ``model`` (a ``conf/model`` option) would load with its weights.

    Order, as for the weights: the option's ``tokenizer`` folder; ``name_or_path`` as a local folder; the copy
    converted from a GGUF file under ``cache_dir``; the Hugging Face cache; the hub when it answers; the GGUF file
    itself (its metadata holds the tokenizer). The tiny model's byte-level tokenizer is built in-process.

    Args:
        model: the composed ``model`` node.
        cache_dir: ``paths.cache_dir``.

    Returns:
        The tokenizer, and where it came from.

    Raises:
        ModelLoadError: no tokenizer can be found offline or on the hub.
    """
    from llmft.models.gguf import DONE_MARKER, locate_gguf
    from llmft.models.hub import hub_reachable

    name, own = model.get("name_or_path"), model.get("tokenizer")
    if own:
        return AutoTokenizer.from_pretrained(own), own
    if model._target_ in TINY_TARGETS:
        from llmft.models.tiny import byte_level_tokenizer

        return byte_level_tokenizer(), "the tiny model's byte-level tokenizer (built in-process)"
    if name is None:
        raise ModelLoadError(f"the model option ({model._target_}) names no name_or_path or tokenizer to load.")
    folder = Path(str(name)).expanduser()
    converted = Path(cache_dir).expanduser() / "models" / str(name).replace("/", "--") if cache_dir else None
    for source in (folder, converted):
        if source is not None and source.is_dir() and (source != converted or (source / DONE_MARKER).exists()):
            return AutoTokenizer.from_pretrained(source), str(source)
    try:
        return AutoTokenizer.from_pretrained(name, revision=model.get("revision"), local_files_only=True), \
            f"{name} (Hugging Face cache)"
    except (OSError, ValueError):
        pass
    if hub_reachable():
        return AutoTokenizer.from_pretrained(name, revision=model.get("revision")), f"{name} (hub)"
    gguf = model.get("gguf")
    if gguf:
        path = locate_gguf(gguf["package"], gguf["file"])
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), str(path)
    raise ModelLoadError(f"the tokenizer of {name} is not in a local folder or the Hugging Face cache, and the hub "
                         f"cannot be reached. Download it elsewhere (huggingface-cli download {name} --local-dir "
                         "DIR), copy DIR here and pass model.name_or_path=DIR, or pick model=tiny.")

