"""Files that are whole or absent: atomic writes, checksums and manifests.

Every JSON, YAML and weight file llmft leaves is written to a temporary name in the same folder, flushed to disk
and renamed over its final name, so a crash, a kill or a full disk never leaves a 0-byte or half-written file
under a name that a later command reads. A manifest (``manifest.json``: size and SHA-256 of each file) lets a
reader check that what it is about to trust is what was written.
"""

import errno
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

from llmft.errors import LlmftError

MANIFEST = "manifest.json"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


class WriteError(LlmftError):
    """A file could not be written: the disk is full, the folder is read-only, or a size limit was hit."""


def explain_write_error(path: Union[str, Path], exc: OSError) -> WriteError:
    """One paragraph that says why ``path`` could not be written and what to do."""
    if exc.errno in _FULL:
        advice = ("The disk (or a quota or file-size limit) is full: free some space, or point the run somewhere "
                  "else with hydra.run.dir=... and paths.cache_dir=...")
    elif exc.errno in _DENIED:
        advice = ("The folder is not writable by this user: choose a writable folder with hydra.run.dir=... "
                  "(run folders) or paths.cache_dir=... (the model and tokenization cache)")
    else:
        advice = "Check the folder and the disk, then run the command again"
    return WriteError(f"could not write {path}: {exc.strerror or exc}. {advice}; nothing half-written was left "
                      "under that name.")


def atomic_write(path: Union[str, Path], data: Union[bytes, str]) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync'ed and renamed into place.

    Raises:
        WriteError: the write failed (full disk, read-only folder); the temporary file is removed and any
            earlier file under ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise explain_write_error(path, exc) from None
    return path


def finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become strings so that files stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Union[str, Path], payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON, atomically."""
    return atomic_write(path, json.dumps(finite(payload), indent=2, ensure_ascii=False) + "\n")


def read_json(path: Union[str, Path], what: str = "file") -> dict:
    """Read a JSON file that llmft wrote, or explain in one paragraph why it cannot be used.

    Raises:
        LlmftError: the file is missing, empty or not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmftError(f"{path} does not exist: the {what} was never written (the run stopped before).") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise LlmftError(f"{path} is damaged ({exc}); it is not the {what} llmft wrote. Use another copy of the "
                         "run, or train it again.") from None


def sha256_file(path: Union[str, Path], block: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Union[str, Path], names: Iterable[str]) -> Path:
    """Record the size and SHA-256 of each file (relative to ``folder``) in ``folder/manifest.json``."""
    folder = Path(folder)
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in sorted(names)}
    return write_json(folder / MANIFEST, {"files": files})


def verify_manifest(folder: Union[str, Path]) -> Optional[str]:
    """Check every file of ``folder``'s manifest; None when all match, else what is wrong (one sentence)."""
    folder = Path(folder)
    try:
        files: Dict[str, dict] = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{folder / MANIFEST} is missing"
    except (ValueError, KeyError, TypeError):
        return f"{folder / MANIFEST} is damaged"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{path} has {path.stat().st_size} bytes, {expected['size']} were written"
        if sha256_file(path) != expected["sha256"]:
            return f"{path} does not match its checksum (altered or damaged)"
    return None
