"""Where a model's files come from: a local folder, the Hugging Face cache, the hub, or a converted GGUF file."""

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlparse

from transformers import AutoConfig

from llmft.errors import ModelLoadError
from llmft.model_cache import conversion_of, converted_folder, fallback_for
from llmft.models.gguf import convert_gguf

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Return True if the Hugging Face hub answers a TCP connection within ``timeout_s``.

    Asked once per process, so that an offline machine does not wait out the hub client's retries (~30 s).
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _in_hf_cache(name: str, revision: Optional[str]) -> bool:
    try:
        AutoConfig.from_pretrained(name, revision=revision, local_files_only=True, trust_remote_code=False)
        return True
    except (OSError, ValueError):
        return False


def find_source(name_or_path: str, revision: Optional[str], gguf: Optional[Mapping[str, str]],
                cache_dir: Optional[str]) -> Optional[str]:
    """Return a folder or hub id that ``from_pretrained`` can load without converting anything, or None.

    Order: a local folder; the Hugging Face cache; the hub when reachable; an earlier conversion of the model's
    GGUF fallback (only if the fallback is this model's: ``llmft.model_cache.fallback_for``). None means only the
    GGUF file itself (if any) has the model.
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if _in_hf_cache(name_or_path, revision):
        log.info("Model %s: from the Hugging Face cache", name_or_path)
        return name_or_path
    if hub_reachable():
        log.info("Model %s: downloading from the Hugging Face hub", name_or_path)
        return name_or_path
    converted = conversion_of(name_or_path, cache_dir, gguf)
    if fallback_for(name_or_path, gguf) is not None and converted is not None:
        return str(converted)
    return None


def resolve_source(name_or_path: str, revision: Optional[str], gguf: Optional[Mapping[str, str]],
                   cache_dir: Optional[str]) -> str:
    """Return a folder or hub id that ``from_pretrained`` can load offline, converting a GGUF file if needed.

    Order: as ``find_source``, then the conversion of the model's GGUF fallback.

    Raises:
        ModelLoadError: none of these has the model.
    """
    source = find_source(name_or_path, revision, gguf, cache_dir)
    if source is not None:
        return source
    check_available(name_or_path, revision, gguf, cache_dir)
    if cache_dir is None:
        raise ModelLoadError("paths.cache_dir is not set, so the GGUF weights have nowhere to be converted to.")
    return str(convert_gguf(fallback_for(name_or_path, gguf), name_or_path, converted_folder(name_or_path, cache_dir)))


def check_available(name_or_path: str, revision: Optional[str], gguf: Optional[Mapping[str, str]],
                    cache_dir: Optional[str]) -> None:
    """Raise ``ModelLoadError`` unless ``resolve_source`` can find the model (or convert its own GGUF fallback);
    the pipeline asks before the memory budget, so an offline model is reported first.
    """
    if fallback_for(name_or_path, gguf) is not None or find_source(name_or_path, revision, gguf, cache_dir):
        return
    dropped = (f" (the model option's offline GGUF weights are {gguf.get('model_id') or 'of an undeclared model'}, "
               "not this model, so they are not used)" if gguf is not None else "")
    raise ModelLoadError(
        f"model {name_or_path} is not in the local Hugging Face cache and the hub cannot be reached{dropped}. On a "
        "machine "
        f"with internet run `hf download {name_or_path} --local-dir DIR` (the `hf` command of huggingface_hub), "
        f"copy DIR here and pass model.name_or_path=DIR; or run with model=smollm2-135m, which works offline."
    )
