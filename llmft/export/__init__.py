"""Export a finished run: the adapter with a model card, and optionally a merged full model, checked.

``export_run`` and ``ExportError`` are imported on first use, so that ``llmft-chat``, which needs only the parity
check and the quiet loader of this package, does not pay for the export's imports (gguf, the GGUF writer).
"""

__all__ = ["ExportError", "export_run"]


def __getattr__(name: str):
    if name in __all__:
        from llmft.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
