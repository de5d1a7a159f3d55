"""``open_tokenizer``: a tokenizer from a folder or hub id, the ways its files fail turned into one paragraph naming
the file and the fix. (The tokenizer of a whole ``model`` option is ``llmft.models.tokenizer.load_tokenizer``.)"""

import importlib.util
from pathlib import Path
from typing import Any, Optional

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmft.errors import ModelLoadError


def open_tokenizer(source: str, key: str = "the tokenizer", **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source, **kwargs)``, its failures on local files as ``ModelLoadError``.

    Args:
        source: a folder, or a hub id (in the cache or online).
        key: the setting that named ``source``, for the message (``model.tokenizer``).

    Raises:
        ModelLoadError: the folder does not exist, its ``tokenizer.json`` is broken, or it holds only a
            SentencePiece model and ``sentencepiece`` is not installed.
    """
    folder = Path(source).expanduser()
    looks_local = folder.exists() or str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1
    if looks_local and not folder.is_dir():
        raise ModelLoadError(f"{key}={source}: no such folder. Point it at a folder with the tokenizer's files "
                             "(tokenizer.json or vocab.json + merges.txt or tokenizer.model, and tokenizer_config.json)"
                             ", or at a hub id that is in the Hugging Face cache.")
    if looks_local and _needs_sentencepiece(folder):  # before transformers logs its tiktoken fallback
        raise ModelLoadError(_local_failure(folder, key, None))
    try:
        return AutoTokenizer.from_pretrained(str(folder) if looks_local else source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"{key}={source}: the tokenizer cannot be loaded: {_first_line(exc)}") from None
    except Exception as exc:  # tokenizers and transformers raise TypeError, ValueError or bare Exception here
        if not looks_local or "trust_remote_code" in str(exc):  # the model loader words the remote-code refusal
            raise
        raise ModelLoadError(_local_failure(folder, key, exc)) from None


def _needs_sentencepiece(folder: Path) -> bool:
    """A folder whose only vocabulary is a SentencePiece model, on a machine without the sentencepiece package."""
    other = ("tokenizer.json", "vocab.json", "vocab.txt")
    return (any(folder.glob("*.model")) and not any((folder / name).is_file() for name in other)
            and not any(folder.glob("*.tiktoken")) and importlib.util.find_spec("sentencepiece") is None)


def _local_failure(folder: Path, key: str, exc: Optional[Exception]) -> str:
    if _needs_sentencepiece(folder):
        return (f"{key}={folder}: the folder holds only a SentencePiece model ({next(folder.glob('*.model')).name}, "
                "no tokenizer.json), and reading it needs the sentencepiece package, which is not installed. "
                "Install it: pip install sentencepiece.")
    if (folder / "tokenizer.json").is_file():
        return (f"{key}={folder}: {folder / 'tokenizer.json'} cannot be read ({type(exc).__name__}: "
                f"{_first_line(exc)}): the file is truncated or was written for another tokenizer layout. Copy it "
                "again from the model's repository, or delete it to let transformers rebuild it from vocab.json + "
                "merges.txt or tokenizer.model when the folder has them.")
    return f"{key}={folder}: the tokenizer files cannot be read ({type(exc).__name__}: {_first_line(exc)})."


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
