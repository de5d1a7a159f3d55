"""Export a finished run: the adapter with a model card, and optionally a merged full model, checked."""

from llmft.export.exporter import ExportError, export_run

__all__ = ["ExportError", "export_run"]
