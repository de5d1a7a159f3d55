"""Start a command's process without the garbage collector scanning the libraries as they load.

Importing torch, transformers, peft, datasets and evaluate creates about half a million Python objects that live as
long as the process. While they load, Python's collector runs its full collection again and again, each pass over
every object loaded so far: 0.5 s of a default ``llmft-train``'s start-up (measured with ``gc.callbacks``), for
objects none of which is garbage. ``quiet_collector`` keeps the collector off while a command imports and then
freezes what was imported (``gc.freeze``: left out of every later collection), so that the collections during the
run scan only what the run creates.
"""

import contextlib
import gc
from typing import Iterator

_entered = False


@contextlib.contextmanager
def quiet_collector() -> Iterator[None]:
    """No garbage collection inside; on leaving, what exists is frozen and the collector is as it was. Only the
    first time in a process (a sweep's later jobs import nothing new, and their objects must stay collectable).
    For a command's imports: objects frozen here are never collected, so do not build garbage cycles inside."""
    global _entered
    if _entered:
        yield
        return
    _entered, enabled = True, gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
