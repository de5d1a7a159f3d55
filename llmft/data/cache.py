"""Cached tokenization that is never trained on unless it is exactly what was written.

Each cached Arrow file gets a sidecar ``NAME.sha256`` once it is complete; a file whose sidecar is missing or
does not match (truncated by a crash, altered by hand or by another program) is reported in one line, deleted and
rebuilt.
"""

import logging
from pathlib import Path

from llmft.files import atomic_write, explain_write_error, sha256_file

log = logging.getLogger(__name__)


def _sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".sha256")


def usable_cache(cache: Path) -> bool:
    """True when ``cache`` exists and matches its checksum; a damaged file is removed so that it is rebuilt.

    Raises:
        WriteError: the cache folder cannot be created or written (``paths.cache_dir``).
    """
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain_write_error(cache.parent, exc) from None
    if not cache.is_file():
        return False
    sidecar = _sidecar(cache)
    expected = sidecar.read_text().strip() if sidecar.is_file() else None
    if expected == sha256_file(cache):
        return True
    log.warning("Tokenization cache %s does not match its checksum (%s): rebuilding it.", cache,
                "no checksum" if expected is None else "altered or truncated")
    cache.unlink()
    sidecar.unlink(missing_ok=True)
    return False


def seal_cache(cache: Path) -> None:
    """Record the checksum of a freshly written cache file."""
    atomic_write(_sidecar(cache), sha256_file(cache) + "\n")
