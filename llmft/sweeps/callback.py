"""The Hydra callback that writes the sweep's comparison when a multirun ends."""

import logging
from pathlib import Path
from typing import Any, List

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from llmft.sweeps.table import collect_runs, write_comparison

log = logging.getLogger(__name__)
FAILED_JOBS: List[str] = []  # the failed jobs of the sweeps this process ran: llmft-train then exits non-zero


class SweepSummary(Callback):
    """Writes ``sweep_summary.csv``, ``sweep_summary.md`` and ``sweep_*.png`` into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Collect every job folder of the sweep (failed ones included) into the table and plots; exit with
        status 1 when no job completed (a SystemExit: Hydra swallows a callback's exceptions, not that)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_runs([str(sweep_dir)])
        if not rows:
            return
        paths = write_comparison(rows, sweep_dir)
        done = sum(r["status"] == "completed" for r in rows)
        FAILED_JOBS.extend(r["job"] for r in rows if r["status"] == "failed")
        log.info("Sweep: %d of %d jobs completed. Comparison: %s", done, len(rows), ", ".join(str(p) for p in paths))
        if not done:  # Hydra would exit 0; a script or CI must see that the sweep produced nothing
            log.error("No job of the sweep completed; the reasons are in %s", paths[1])
            raise SystemExit(1)
