"""A package whose names load on first use (PEP 562), so that a command importing one of its modules does not pay
for the libraries of the others (``llmft.data``, ``llmft.evaluation``)."""

import importlib
from typing import Callable, Mapping


def lazy_names(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of ``package``: each name of ``exports`` from the module it maps to, imported on first use."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__

