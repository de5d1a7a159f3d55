"""llmft's cache of converted GGUF weights: where a conversion lives, which model id it holds, and which model
option's fallback may use it. Standard library only, so the memory planner can ask without importing torch."""

import json
from pathlib import Path
from typing import Any, Mapping, Optional

DONE_MARKER = ".llmft-converted"


def converted_folder(name_or_path: str, cache_dir: Optional[str]) -> Optional[Path]:
    """Where the safetensors copy of a model's GGUF file is kept (None without a cache folder)."""
    return Path(str(cache_dir)).expanduser() / "models" / name_or_path.replace("/", "--") if cache_dir else None


def fallback_for(name_or_path: str, gguf: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The GGUF fallback if it holds ``name_or_path``'s weights, else None.

    A model option's ``gguf`` names the hub id it stands in for (``model_id``); overriding ``model.name_or_path``
    to another model drops the fallback instead of loading the option's own weights under the new name.
    """
    return gguf if gguf is not None and gguf.get("model_id") == name_or_path else None


def record_conversion(folder: Path, model_id: str, gguf_path: Path) -> None:
    """Mark ``folder`` as a finished conversion of ``gguf_path`` holding ``model_id``'s weights."""
    (folder / DONE_MARKER).write_text(json.dumps({"model_id": model_id, "gguf": str(gguf_path)}) + "\n")


def holds(folder: Optional[Path], name_or_path: str, gguf: Optional[Mapping[str, Any]] = None) -> bool:
    """Whether ``folder`` is a finished conversion of ``name_or_path``'s weights.

    The conversion's record names its model id. A record from before ids were recorded names only the GGUF file;
    it is trusted when that is the file of ``name_or_path``'s own fallback ``gguf``, and converted again otherwise.
    """
    marker = folder / DONE_MARKER if folder is not None else None
    if marker is None or not marker.is_file():
        return False
    text = marker.read_text().strip()
    try:
        return json.loads(text).get("model_id") == name_or_path
    except (ValueError, AttributeError):  # the earlier record: the GGUF file's path alone
        own = fallback_for(name_or_path, gguf)
        return own is not None and Path(text).name == own.get("file")


def conversion_of(name_or_path: str, cache_dir: Optional[str],
                  gguf: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """The finished conversion of ``name_or_path`` in the cache, or None; never a folder holding another id."""
    folder = converted_folder(name_or_path, cache_dir)
    return folder if holds(folder, name_or_path, gguf) else None
