"""What a run leaves in its folder: ``metrics.jsonl`` line by line, JSON reports, and peak memory."""

import json
import re
import resource
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from llmft.files import atomic_write, finite, write_json


def _on_gpu(device: str) -> bool:
    # a CPU run on a machine with a GPU: bitsandbytes may have initialised CUDA, but the run's memory is host memory
    return device == "cuda" and torch.cuda.is_available() and torch.cuda.is_initialized()


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory of this run in MiB: CUDA max allocated for a ``cuda`` run, else peak resident memory.

    The resident peak is Linux's ``VmHWM``, which ``reset_peak_memory`` sets back to the current resident size,
    so it covers this run only; elsewhere it is ``ru_maxrss``, the peak of the whole process.
    """
    if _on_gpu(device):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):  # not Linux: the process-lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux and BSD report KiB


def peak_reserved_mb(device: str = "cpu") -> Optional[float]:
    """Peak memory the CUDA caching allocator reserved in MiB (allocated plus its cache), or None off a GPU."""
    if _on_gpu(device):
        return torch.cuda.max_memory_reserved() / 2**20
    return None


def reset_peak_memory() -> None:
    """Start the peaks that ``peak_memory_mb`` reports afresh, so a run (or a sweep's job) measures its own."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current resident size
    except OSError:
        pass  # not Linux (or not permitted): the resident peak stays the process's


class RunRecorder:
    """Writes the files of one run folder, and hands the same lines and reports to the trackers (W&B)."""

    def __init__(self, output_dir: Path, trackers: Sequence[Any] = ()):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.trackers = list(trackers)

    def log_step(self, metrics: dict) -> None:
        """Append one line to ``metrics.jsonl``."""
        with self.metrics_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(finite(metrics)) + "\n")
        for tracker in self.trackers:
            tracker.log_step(metrics)

    def write_json(self, name: str, payload: dict) -> Path:
        """Write ``payload`` to ``name`` in the run folder (indented, UTF-8, atomically) and return its path."""
        path = write_json(self.output_dir / name, payload)
        for tracker in self.trackers:
            tracker.record(name, payload)
        return path

    def restart_metrics(self, rows: Sequence[dict]) -> None:
        """Replace ``metrics.jsonl`` with ``rows`` (a resumed run: the lines up to its checkpoint, each step once).

        The trackers are not replayed: a resumed W&B run continues from the next step.
        """
        atomic_write(self.metrics_path, "".join(json.dumps(finite(row)) + "\n" for row in rows))

    def close(self) -> None:
        """Close the trackers (a W&B run finishes here)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
