"""Sweeps: one table and a few plots comparing the runs of a multirun (or any run folders)."""

from llmft.sweeps.table import collect_runs, write_comparison

__all__ = ["collect_runs", "write_comparison"]
