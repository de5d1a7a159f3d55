"""What a run leaves in its folder: ``metrics.jsonl`` line by line, JSON reports, and peak memory."""

import json
import math
import resource
from pathlib import Path
from typing import Any, Sequence

import torch


def peak_memory_mb() -> float:
    """Peak memory of this process in MB: CUDA max allocated when on a GPU, else peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _finite(value: Any) -> Any:
    """JSON has no NaN: write non-finite floats as strings so the files stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


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
            out.write(json.dumps(_finite(metrics)) + "\n")
        for tracker in self.trackers:
            tracker.log_step(metrics)

    def write_json(self, name: str, payload: dict) -> Path:
        """Write ``payload`` to ``name`` in the run folder (indented, UTF-8) and return its path."""
        path = self.output_dir / name
        path.write_text(json.dumps(_finite(payload), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for tracker in self.trackers:
            tracker.record(name, payload)
        return path

    def close(self) -> None:
        """Close the trackers (a W&B run finishes here)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
