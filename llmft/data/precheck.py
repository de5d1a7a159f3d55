"""The data paths of a composed config, checked with the overrides (``llmft.config.precheck``), before a run folder
exists: a missing file, an empty one or a folder without data files is refused in well under a second."""

from pathlib import Path

from omegaconf import DictConfig

from llmft.data.reading import locate  # the selection rule itself (a fast import: no torch, no datasets)
from llmft.errors import ConfigError, DataError


def check_data_paths(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` if ``data.path`` (or ``data.val_path``) is missing, an empty file, or a folder without
    data files, before a run folder exists: the files training would read, chosen as training chooses them.

    A sweep's every value is checked this way; what is inside the files is checked when they are read.
    """
    data = cfg.get("data")
    if data is None or data.get("path") is None:
        return
    try:
        train, val, _ = locate(str(data.path), data.get("val_path"))
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    empty = [str(f) for f in train + val if f.is_file() and _blank(f)]
    if empty:
        key = "data.val_path" if data.get("val_path") and str(Path(data.val_path).expanduser()) in empty \
            else "data.path"
        raise ConfigError(f"{key}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (no records). "
                          "Point it at a file with records, or fill the file.")


def _blank(path: Path) -> bool:
    """True if ``path`` holds nothing but whitespace (read until the first other byte)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True
